//! Health checks through the real gateway: nodes that fail their checks or the requests sent
//! to them stop getting traffic and get it back when they recover; backup tiers take over;
//! the control API shows it all.
//!
//! Checks run four times a second, so a node changes state within a second or two; every
//! wait is bounded by `WAIT`, and nothing asserts a duration.

mod support;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::client::{get, Response};
use support::tls::{TestCa, TlsUpstream};
use support::upstream::{named, respond, Upstream};
use support::{wait_until, Pylon};

/// Active http checks on `/health`: two failures take a node out, two successes bring it back.
const HTTP_CHECKS: &str = "{active: {type: http, http_path: /health, timeout: 1, \
     healthy: {interval: 0.25, successes: 2}, \
     unhealthy: {interval: 0.25, http_failures: 2, tcp_failures: 2, timeouts: 2}}}";

/// A node that answers traffic with 200 and its name, and `/health` with a status the test
/// sets, counting the failing answers.
struct Node {
    up: Upstream,
    check_status: Arc<AtomicU16>,
    failed_checks: Arc<AtomicUsize>,
}

impl Node {
    fn start(name: &str) -> Node {
        let check_status = Arc::new(AtomicU16::new(200));
        let failed_checks = Arc::new(AtomicUsize::new(0));
        let (status, failed, reply) =
            (check_status.clone(), failed_checks.clone(), name.to_owned());
        let up = Upstream::with_handler(
            name,
            Arc::new(move |req, stream| {
                let code = if req.target == "/health" {
                    status.load(Ordering::SeqCst)
                } else {
                    200
                };
                if code != 200 {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                respond(stream, code, &[("X-Upstream", &reply)], reply.as_bytes());
                true
            }),
        );
        Node {
            up,
            check_status,
            failed_checks,
        }
    }

    fn fail_checks(&self) {
        self.check_status.store(500, Ordering::SeqCst);
    }

    fn pass_checks(&self) {
        self.check_status.store(200, Ordering::SeqCst);
    }

    /// Requests other than health checks.
    fn traffic(&self) -> usize {
        self.up
            .received()
            .iter()
            .filter(|r| r.target != "/health")
            .count()
    }
}

/// A node in APISIX's list form.
fn node(addr: SocketAddr, priority: i32) -> String {
    format!(
        "{{host: \"{}\", port: {}, weight: 1, priority: {priority}}}",
        addr.ip(),
        addr.port()
    )
}

/// Upstream `u` with `nodes` and `checks`, and route `/t` to it.
fn upstream(nodes: &[String], checks: &str) -> String {
    format!(
        "upstreams:\n  - {{id: u, retries: 0, nodes: [{}], checks: {checks}}}\nroutes:\n  - {{id: r, uri: /t, upstream_id: u}}\n",
        nodes.join(", ")
    )
}

/// Who answered: the upstream's name, or the gateway's own status.
fn who(res: &Response) -> String {
    res.header("x-upstream")
        .map_or_else(|| res.status.to_string(), str::to_owned)
}

/// Sends `n` GETs for `/t`, each on a new connection (so both workers serve), and counts who
/// answered.
fn tally(pylon: &Pylon, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts
            .entry(who(&get(pylon.addr, "example.com", "/t")))
            .or_default() += 1;
    }
    counts
}

/// Every answer came from `a` or `b`, and each answered some. (Each worker alternates
/// between them, so with ten requests over two workers both always get some.)
fn both_served(counts: &HashMap<String, usize>) -> bool {
    let (a, b) = (counts.get("a"), counts.get("b"));
    a.is_some() && b.is_some() && a.unwrap_or(&0) + b.unwrap_or(&0) == 10
}

fn control(pylon: &Pylon, path: &str) -> Response {
    get(pylon.control.expect("a control API"), "127.0.0.1", path)
}

/// Node `addr` of upstream `key` as `/v1/healthcheck/<key>` shows it.
fn node_health(pylon: &Pylon, key: &str, addr: SocketAddr) -> Value {
    let res = control(pylon, &format!("/v1/healthcheck/{key}"));
    assert_eq!(res.status, 200, "{}", res.text());
    let report = res.json();
    report["nodes"]
        .as_array()
        .and_then(|nodes| {
            nodes
                .iter()
                .find(|n| n["port"] == addr.port() && n["ip"] == addr.ip().to_string())
        })
        .cloned()
        .unwrap_or_else(|| panic!("{addr} not in {report}"))
}

fn wait_status(pylon: &Pylon, addr: SocketAddr, status: &str) {
    wait_until(
        || node_health(pylon, "upstreams/u", addr)["status"] == status,
        &format!("{addr} to be {status}"),
    );
}

fn refuses(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
}

#[test]
fn a_node_failing_its_http_checks_gets_no_traffic_until_it_passes_them_again() {
    let a = Node::start("a");
    let b = Node::start("b");
    let pylon = Pylon::start(
        &upstream(&[node(a.up.addr, 0), node(b.up.addr, 0)], HTTP_CHECKS),
        "",
    );
    assert!(both_served(&tally(&pylon, 10)));

    b.fail_checks();
    wait_status(&pylon, b.up.addr, "unhealthy");
    assert!(
        b.failed_checks.load(Ordering::SeqCst) >= 2,
        "out only after unhealthy.http_failures failed checks"
    );
    let before = b.traffic();
    assert_eq!(tally(&pylon, 20).get("a"), Some(&20));
    assert_eq!(b.traffic(), before, "an unhealthy node gets no traffic");

    b.pass_checks();
    wait_status(&pylon, b.up.addr, "healthy");
    assert!(both_served(&tally(&pylon, 10)));
}

#[test]
fn tcp_checks_take_out_a_node_that_stops_listening_and_bring_it_back() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let b_addr = b.addr;
    let checks = "{active: {type: tcp, timeout: 1, healthy: {interval: 0.25, successes: 1}, \
                  unhealthy: {interval: 0.25, tcp_failures: 1}}}";
    let pylon = Pylon::start(&upstream(&[node(a.addr, 0), node(b_addr, 0)], checks), "");

    b.stop();
    wait_until(|| refuses(b_addr), "b to refuse connections");
    wait_status(&pylon, b_addr, "unhealthy");
    // With `retries: 0` a request sent to b would fail: none is.
    assert_eq!(tally(&pylon, 20).get("a"), Some(&20));
    let health = node_health(&pylon, "upstreams/u", b_addr);
    assert_eq!(health["counter"]["tcp_failure"], 1, "{health}");

    let b = Upstream::on(b_addr, "b", named("b"));
    wait_status(&pylon, b_addr, "healthy");
    assert!(tally(&pylon, 10).contains_key("b"));
    assert!(b.request_count() > 0);
}

#[test]
fn the_backup_tier_takes_over_while_every_primary_node_is_unhealthy() {
    let p1 = Node::start("p1");
    let p2 = Node::start("p2");
    let backup = Node::start("backup");
    let pylon = Pylon::start(
        &upstream(
            &[
                node(p1.up.addr, 1),
                node(p2.up.addr, 1),
                node(backup.up.addr, 0),
            ],
            HTTP_CHECKS,
        ),
        "",
    );
    assert_eq!(tally(&pylon, 10).get("backup"), None);

    // One primary out: the other takes everything.
    p1.fail_checks();
    wait_status(&pylon, p1.up.addr, "unhealthy");
    assert_eq!(tally(&pylon, 10).get("p2"), Some(&10));

    // Both out: the backup serves.
    p2.fail_checks();
    wait_status(&pylon, p2.up.addr, "unhealthy");
    assert_eq!(tally(&pylon, 10).get("backup"), Some(&10));

    // A primary recovers: it takes everything back.
    p1.pass_checks();
    wait_status(&pylon, p1.up.addr, "healthy");
    assert_eq!(tally(&pylon, 10).get("p1"), Some(&10));
    assert_eq!(backup.traffic(), 10);
}

#[test]
fn when_every_node_is_unhealthy_all_of_them_take_traffic() {
    let a = Node::start("a");
    let b = Node::start("b");
    let pylon = Pylon::start(
        &upstream(&[node(a.up.addr, 0), node(b.up.addr, 0)], HTTP_CHECKS),
        "",
    );
    a.fail_checks();
    b.fail_checks();
    wait_status(&pylon, a.up.addr, "unhealthy");
    wait_status(&pylon, b.up.addr, "unhealthy");

    let counts = tally(&pylon, 10);
    assert!(both_served(&counts), "rather than none: {counts:?}");
}

/// Passive checks take a node out after three 500s. The active checks (which passive ones
/// need) count only 200 and 502 from `/health`, so a node answering 500 to everything is
/// neither taken out nor brought back by them: what moves it is the traffic.
const PASSIVE_CHECKS: &str = "{active: {type: http, http_path: /health, \
     healthy: {interval: 0.25, http_statuses: [200]}, unhealthy: {interval: 0.25, http_statuses: [502]}}, \
     passive: {unhealthy: {http_statuses: [500], http_failures: 3}}}";

/// Answers every request 500.
fn failing(name: &str) -> Upstream {
    let reply = name.to_owned();
    Upstream::with_handler(
        name,
        Arc::new(move |_, stream| {
            respond(stream, 500, &[("X-Upstream", &reply)], b"oops");
            true
        }),
    )
}

/// Sends requests until 20 in a row are answered by `a` (at most 100); returns how many
/// answers came from `b` before that.
fn until_only_a(pylon: &Pylon) -> usize {
    let (mut from_b, mut streak) = (0, 0);
    for _ in 0..100 {
        match who(&get(pylon.addr, "example.com", "/t")).as_str() {
            "a" => streak += 1,
            "b" => {
                from_b += 1;
                streak = 0;
            }
            other => panic!("answered by {other}"),
        }
        if streak == 20 {
            return from_b;
        }
    }
    panic!("b still gets traffic after 100 requests ({from_b} answers)");
}

#[test]
fn passive_checks_take_out_a_node_that_answers_500() {
    let a = Upstream::start("a");
    let b = failing("b");
    let pylon = Pylon::start(
        &upstream(&[node(a.addr, 0), node(b.addr, 0)], PASSIVE_CHECKS),
        "",
    );

    let from_b = until_only_a(&pylon);
    assert!(from_b >= 3, "out only after 3 failures, got {from_b}");
    let health = node_health(&pylon, "upstreams/u", b.addr);
    assert_eq!(health["status"], "unhealthy", "{health}");
    assert_eq!(health["counter"]["http_failure"], 3, "{health}");
    assert_eq!(
        node_health(&pylon, "upstreams/u", a.addr)["status"],
        "healthy"
    );
}

#[test]
fn health_survives_a_config_change_elsewhere_and_resets_when_the_checks_change() {
    let a = Upstream::start("a");
    let b = failing("b");
    let other = Upstream::start("other");
    let config = |extra_route: bool, checks: &str| {
        let mut text = upstream(&[node(a.addr, 0), node(b.addr, 0)], checks);
        if extra_route {
            text.push_str(&format!(
                "  - {{id: other, uri: /other, upstream: {{nodes: {{{}}}}}}}\n",
                other.node()
            ));
        }
        text
    };
    let pylon = Pylon::start(&config(false, PASSIVE_CHECKS), "");
    until_only_a(&pylon);
    let changed_at = node_health(&pylon, "upstreams/u", b.addr)["status_changed_at"].clone();
    assert!(changed_at.is_string(), "{changed_at}");

    // Another route comes: b stays out, from the first request on.
    pylon.reload(&config(true, PASSIVE_CHECKS));
    assert_eq!(who(&get(pylon.addr, "example.com", "/other")), "other");
    assert_eq!(tally(&pylon, 10).get("a"), Some(&10));
    let health = node_health(&pylon, "upstreams/u", b.addr);
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["status_changed_at"], changed_at);

    // The checks change: the state starts afresh, and b is back until it fails again.
    pylon.reload(&config(
        true,
        &PASSIVE_CHECKS.replace("http_failures: 3", "http_failures: 4"),
    ));
    assert_eq!(
        node_health(&pylon, "upstreams/u", b.addr)["status"],
        "healthy"
    );
    assert!(until_only_a(&pylon) >= 4);
}

#[test]
fn the_control_api_lists_checked_upstreams_in_apisix_format() {
    let a = Node::start("a");
    let b = Node::start("b");
    let routes = format!(
        "upstreams:\n  - {{id: u, nodes: [{}, {}], checks: {HTTP_CHECKS}}}\n  - {{id: plain, nodes: [{}]}}\n\
         routes:\n  - {{id: r, uri: /t, upstream_id: u}}\n  - {{id: p, uri: /p, upstream_id: plain}}\n\
         \x20 - {{id: inline, uri: /i, upstream: {{nodes: [{}], checks: {{active: {{type: tcp}}}}}}}}\n",
        node(a.up.addr, 0),
        node(b.up.addr, 0),
        node(a.up.addr, 0),
        node(b.up.addr, 0),
    );
    let pylon = Pylon::start(&routes, "");
    b.fail_checks();
    wait_status(&pylon, b.up.addr, "unhealthy");

    let res = control(&pylon, "/v1/healthcheck");
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("application/json"));
    let list = res.json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["/pylon/routes/inline", "/pylon/upstreams/u"],
        "only upstreams with checks"
    );
    assert_eq!(list[0]["type"], "tcp");
    assert_eq!(list[1]["type"], "http");

    let one = control(&pylon, "/v1/healthcheck/upstreams/u").json();
    assert_eq!(one["name"], "/pylon/upstreams/u");
    let b_health = node_health(&pylon, "upstreams/u", b.up.addr);
    assert_eq!(b_health["ip"], "127.0.0.1");
    assert_eq!(b_health["port"], b.up.addr.port());
    assert_eq!(b_health["counter"]["http_failure"], 2, "{b_health}");
    assert_eq!(b_health["counter"]["success"], 0, "{b_health}");
    assert!(b_health["status_changed_at"].is_string(), "{b_health}");
    let a_health = node_health(&pylon, "upstreams/u", a.up.addr);
    assert_eq!(a_health["status"], "healthy");
    assert!(a_health["status_changed_at"].is_null());

    let missing = control(&pylon, "/v1/healthcheck/upstreams/plain");
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error_msg"].is_string());
    let unknown = control(&pylon, "/v1/nothing");
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error_msg"], "404 Not Found");
}

#[test]
fn a_taken_control_port_stops_pylon_from_starting() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("apisix.yaml"), "routes: []\n").unwrap();
    std::fs::write(
        dir.path().join("node.yaml"),
        format!("proxy:\n  listen: [\"127.0.0.1:0\"]\ncontrol:\n  listen: \"{addr}\"\nmetrics:\n  enabled: false\nconfig:\n  source: yaml\n  file: apisix.yaml\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pylon"))
        .args(["run", "-c"])
        .arg(dir.path().join("node.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("control.listen {addr}")),
        "{stderr}"
    );
}

#[test]
fn https_checks_verify_the_nodes_certificate_unless_told_not_to() {
    let ca = TestCa::new("upstream ca");
    let trusted = TlsUpstream::start("trusted", &ca.issue(&["127.0.0.1"]), None);
    let rogue = TlsUpstream::start("rogue", &TestCa::new("rogue").issue(&["127.0.0.1"]), None);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    // Traffic itself is not verified (`tls.verify: false`): only the checks tell the nodes
    // apart.
    let checked = |id: &str, verify: bool| {
        format!(
            "  - {{id: {id}, scheme: https, tls: {{verify: false}}, retries: 0, nodes: [{}, {}], \
             checks: {{active: {{type: https, https_verify_certificate: {verify}, \
             healthy: {{interval: 0.25, successes: 1}}, unhealthy: {{interval: 0.25, tcp_failures: 1}}}}}}}}\n",
            node(trusted.addr, 0),
            node(rogue.addr, 0),
        )
    };
    let routes = format!(
        "upstreams:\n{}{}routes:\n  - {{id: r, uri: /t, upstream_id: verified}}\n  - {{id: u, uri: /u, upstream_id: unverified}}\n",
        checked("verified", true),
        checked("unverified", false),
    );
    let pylon = Pylon::start(
        &routes,
        &format!("  upstream:\n    trusted_ca: {}\n", ca_file.display()),
    );

    let status = |key: &str, addr: SocketAddr| node_health(&pylon, key, addr)["status"].clone();
    wait_until(
        || status("upstreams/verified", rogue.addr) == "unhealthy",
        "the rogue node to fail its checks",
    );
    assert_eq!(status("upstreams/verified", trusted.addr), "healthy");
    for _ in 0..10 {
        let res = get(pylon.addr, "example.com", "/t");
        assert!(res.text().starts_with("trusted "), "{}", res.text());
    }
    // Without verification both pass: still healthy after several more rounds of probes.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(status("upstreams/unverified", trusted.addr), "healthy");
    assert_eq!(status("upstreams/unverified", rogue.addr), "healthy");
    let listed = control(&pylon, "/v1/healthcheck/upstreams/verified").json();
    assert_eq!(listed["type"], "https");
}
