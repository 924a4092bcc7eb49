//! The `prometheus` plugin and the metrics listener, through the gateway: requests counted by
//! route, service, consumer, node and status over HTTP/1.1 and HTTP/2 alike, routes without
//! the plugin left out, unmatched requests folded into one series, refusals before routing
//! counted by cause, every scrape accepted by `promtool check metrics`, a real Prometheus
//! scraping the listener, and the listener handed over on a restart.
//!
//! Scrape time with many routes (BENCHMARKS.md) is measured by `bench/metrics-scrape.sh`.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::client::{self, Conn};
use support::protocols::{call, PROTOCOLS};
use support::upstream::Upstream;
use support::{wait_until, wait_until_within, Pylon};

/// The samples of a scrape: each line's metric and labels as written, and its value.
fn scrape(pylon: &Pylon) -> (String, BTreeMap<String, f64>) {
    let addr = pylon.metrics.expect("a metrics listener");
    let res = client::get(addr, "localhost", "/apisix/prometheus/metrics");
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = res.text();
    let samples = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect();
    (text, samples)
}

/// A scrape taken once the node has counted `requests` requests: a client has its answer
/// just before its request is counted.
fn scrape_after(pylon: &Pylon, requests: f64) -> (String, BTreeMap<String, f64>) {
    let mut scraped = scrape(pylon);
    wait_until(
        || {
            scraped = scrape(pylon);
            scraped.1.get("apisix_http_requests_total") == Some(&requests)
        },
        &format!("{requests} requests counted"),
    );
    scraped
}

/// Asserts that `promtool check metrics` finds nothing wrong with `text`.
fn assert_promtool_accepts(text: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) on the PATH");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {said}\n{text}");
    assert_eq!(said, "", "promtool has remarks");
}

fn routes(up: &Upstream) -> String {
    let node = json!({ up.addr.to_string(): 1 });
    let mut routes = Vec::new();
    for protocol in PROTOCOLS {
        let p = format!("{protocol:?}");
        routes.push(
            json!({"id": format!("{p}-auth"), "uri": format!("/{p}/auth"),
            "plugins": {"prometheus": {}, "key-auth": {}}, "upstream": {"nodes": node}}),
        );
        routes.push(
            json!({"id": format!("{p}-plain"), "uri": format!("/{p}/plain"),
            "upstream": {"nodes": node}}),
        );
        routes.push(
            json!({"id": format!("{p}-named"), "name": format!("{p} orders"),
            "uris": [format!("/{p}/orders"), format!("/{p}/orders/*")],
            "hosts": ["example.com"], "service_id": "shop"}),
        );
    }
    json!({
        "routes": routes,
        "services": [{"id": "shop", "name": "the shop", "upstream": {"nodes": node},
            "plugins": {"prometheus": {"prefer_name": true}}}],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}],
    })
    .to_string()
}

#[tokio::test]
async fn requests_are_counted_by_route_consumer_node_and_status() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(&routes(&up), "");
    for protocol in PROTOCOLS {
        let p = format!("{protocol:?}");
        let key = [("apikey", "jack-key")];
        for _ in 0..3 {
            let res = call(
                protocol,
                pylon.addr,
                "GET",
                &format!("/{p}/auth"),
                &key,
                b"",
            )
            .await;
            assert_eq!(res.status, 200, "{p}: {}", res.text());
        }
        let res = call(protocol, pylon.addr, "GET", &format!("/{p}/auth"), &[], b"").await;
        assert_eq!(res.status, 401, "{p}");
        for uri in [format!("/{p}/plain"), format!("/{p}/orders/7")] {
            let res = call(protocol, pylon.addr, "GET", &uri, &[], b"").await;
            assert_eq!(res.status, 200, "{p} {uri}");
        }
    }

    let (text, samples) = scrape_after(&pylon, 12.0);
    let node = up.addr.ip();
    for protocol in PROTOCOLS {
        let p = format!("{protocol:?}");
        let status = |code: u16,
                      route: &str,
                      uri: &str,
                      host: &str,
                      service: &str,
                      consumer: &str,
                      node: &str| {
            let series = format!("apisix_http_status{{code=\"{code}\",route=\"{route}\",matched_uri=\"{uri}\",matched_host=\"{host}\",service=\"{service}\",consumer=\"{consumer}\",node=\"{node}\"}}");
            samples
                .get(&series)
                .copied()
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        };
        let auth = (format!("{p}-auth"), format!("/{p}/auth"));
        assert_eq!(
            status(200, &auth.0, &auth.1, "", "", "jack", &node.to_string()),
            3.0
        );
        // Refused by key-auth before any node was tried: no consumer, no node.
        assert_eq!(status(401, &auth.0, &auth.1, "", "", "", ""), 1.0);
        // Named as `prefer_name` asks, on every pattern of the route.
        let orders = format!("/{p}/orders,/{p}/orders/*");
        let named = status(
            200,
            &format!("{p} orders"),
            &orders,
            "example.com",
            "the shop",
            "",
            &node.to_string(),
        );
        assert_eq!(named, 1.0);

        let latency = |kind: &str| {
            let series = format!("apisix_http_latency_count{{type=\"{kind}\",route=\"{}\",service=\"\",consumer=\"jack\",node=\"{node}\"}}", auth.0);
            samples
                .get(&series)
                .copied()
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        };
        assert_eq!(
            (latency("request"), latency("upstream"), latency("apisix")),
            (3.0, 3.0, 3.0)
        );
        let inf = format!("apisix_http_latency_bucket{{type=\"request\",route=\"{}\",service=\"\",consumer=\"jack\",node=\"{node}\",le=\"+Inf\"}}", auth.0);
        assert_eq!(samples.get(&inf), Some(&3.0), "{text}");
        let bandwidth = |kind: &str| {
            let series = format!("apisix_bandwidth{{type=\"{kind}\",route=\"{}\",service=\"\",consumer=\"jack\",node=\"{node}\"}}", auth.0);
            samples
                .get(&series)
                .copied()
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        };
        // Three heads of at least `GET /Http1/auth` and `apikey: jack-key`; three bodies `up`
        // (with their heads, over HTTP/1).
        assert!(bandwidth("ingress") >= 3.0 * 30.0, "{text}");
        assert!(bandwidth("egress") >= 3.0 * 2.0, "{text}");
        // A route without the plugin is counted in the node's totals only.
        assert!(!text.contains(&format!("route=\"{p}-plain\"")), "{text}");
    }
    let connections = |state: &str| {
        samples[&format!("apisix_nginx_http_current_connections{{state=\"{state}\"}}")]
    };
    assert!(connections("accepted") >= 12.0, "{text}");
    assert_eq!(connections("handled"), connections("accepted"));
    assert_eq!(
        samples["pylon_config_served_revision"],
        samples["pylon_config_store_revision"]
    );
    assert!(text.contains("\napisix_node_info{hostname=\""), "{text}");
    assert_promtool_accepts(&text);
}

#[tokio::test]
async fn unmatched_requests_fold_into_one_series_and_refusals_count_by_cause() {
    let up = Upstream::start("up");
    let config = json!({
        "routes": [{"id": "r", "uri": "/r", "upstream": {"nodes": {up.addr.to_string(): 1}}}],
        "global_rules": [{"id": "all", "plugins": {"prometheus": {}}}],
    });
    let pylon = Pylon::start(&config.to_string(), "  max_request_line: 1024\n");
    for protocol in PROTOCOLS {
        for i in 0..5 {
            let res = call(
                protocol,
                pylon.addr,
                "GET",
                &format!("/scan/{protocol:?}/{i}"),
                &[],
                b"",
            )
            .await;
            assert_eq!(res.status, 404);
        }
    }
    // Refused by the HTTP/1 codec before any route is looked for.
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(2048));
    assert_eq!(client::raw(pylon.addr, long_line.as_bytes()).status, 414);
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(40 * 1024)
    );
    assert_eq!(client::raw(pylon.addr, big_head.as_bytes()).status, 431);

    let (text, samples) = scrape_after(&pylon, 12.0);
    let unmatched = "apisix_http_status{code=\"404\",route=\"\",matched_uri=\"\",matched_host=\"\",service=\"\",consumer=\"\",node=\"\"}";
    assert_eq!(samples.get(unmatched), Some(&10.0), "{text}");
    assert_eq!(text.matches("\napisix_http_status{").count(), 1, "{text}");
    let refused = |code: u16, cause: &str| {
        samples[&format!("pylon_http_refused_total{{code=\"{code}\",cause=\"{cause}\"}}")]
    };
    assert_eq!(refused(414, "uri_too_long"), 1.0);
    assert_eq!(refused(431, "headers_too_large"), 1.0);
    assert_eq!(refused(400, "bad_request"), 0.0);
    assert_promtool_accepts(&text);

    // Only the metrics' paths are served.
    let metrics = pylon.metrics.unwrap();
    assert_eq!(client::get(metrics, "localhost", "/metrics").status, 200);
    assert_eq!(client::get(metrics, "localhost", "/v1/status").status, 404);
}

/// A Prometheus server, stopped when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts `prometheus` in `dir`, scraping `target` every second.
    fn start(dir: &Path, target: SocketAddr) -> Prometheus {
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: pylon\n    metrics_path: /apisix/prometheus/metrics\n\
             \x20   static_configs:\n      - targets: [\"{target}\"]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        // A free port, given back for Prometheus to take.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian's prometheus package) on the PATH");
        Prometheus { child, addr }
    }

    /// The answer to an instant query, once Prometheus answers at all.
    fn query(&self, query: &str) -> Option<Value> {
        let mut conn = Conn::try_connect(self.addr).ok()?;
        let target = format!("/api/v1/query?query={query}");
        conn.send(
            format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        let res = conn.read_response().ok()?;
        (res.status == 200).then(|| res.json())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_gateway() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(&routes(&up), "");
    for protocol in PROTOCOLS {
        let uri = format!("/{protocol:?}/auth");
        for _ in 0..2 {
            let res = call(
                protocol,
                pylon.addr,
                "GET",
                &uri,
                &[("apikey", "jack-key")],
                b"",
            )
            .await;
            assert_eq!(res.status, 200);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::start(dir.path(), pylon.metrics.unwrap());
    let mut found = Value::Null;
    // Prometheus starts, scrapes within its one-second interval, and answers the query.
    wait_until_within(
        Duration::from_secs(60),
        || {
            found = prometheus
                .query("apisix_http_status")
                .unwrap_or(Value::Null);
            found["data"]["result"]
                .as_array()
                .is_some_and(|r| r.len() == 2)
        },
        "Prometheus to have scraped apisix_http_status",
    );
    let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    let mut results: Vec<(String, String, String)> = found["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let metric = &r["metric"];
            (
                metric["route"].as_str().unwrap_or_default().to_owned(),
                metric["consumer"].as_str().unwrap_or_default().to_owned(),
                r["value"][1].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    results.sort();
    let expected = [
        ("Http1-auth".to_owned(), "jack".to_owned(), "2".to_owned()),
        ("Http2-auth".to_owned(), "jack".to_owned(), "2".to_owned()),
    ];
    assert_eq!(results, expected, "{found}\n{log}");
    let up = prometheus.query("up").unwrap();
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}\n{log}");
}

#[tokio::test]
async fn a_restart_takes_the_metrics_listener_over() {
    let up = Upstream::start("up");
    let config = routes(&up);
    let pylon = Pylon::start(&config, "");
    let res = call(
        PROTOCOLS[0],
        pylon.addr,
        "GET",
        "/Http1/auth",
        &[("apikey", "jack-key")],
        b"",
    )
    .await;
    assert_eq!(res.status, 200);
    let successor = pylon.successor(&config, "");
    assert_eq!(
        successor.metrics, pylon.metrics,
        "the same socket, handed over"
    );
    // Once the old process has let go of the socket, the new one answers every scrape, with
    // its own counts.
    let (text, _) = scrape_after(&successor, 0.0);
    assert!(text.contains("\napisix_node_info{hostname="), "{text}");
}
