//! The loggers that send in batches (`http-logger`, `tcp-logger`, `udp-logger`, `syslog`)
//! through the gateway, over HTTP/1.1 and HTTP/2 alike, to real receivers: records rendered
//! from `log_format` (the route's or the plugin metadata's), batches as configured, a
//! destination that is down and then comes up getting the records by the retries, and a full
//! buffer that drops and counts while requests go on unhindered.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::client::get;
use support::protocols::{call, Protocol, PROTOCOLS};
use support::receivers::{closed_addr, TcpReceiver, UdpReceiver};
use support::upstream::{respond, Received, Upstream};
use support::{validate, wait_until, Pylon, WAIT};

/// A route on `uri` to `up` with `plugin` configured as `config`.
fn route(uri: &str, up: &Upstream, plugin: &str, config: Value) -> Value {
    json!({"id": uri.trim_start_matches('/'), "uri": uri, "plugins": {plugin: config},
        "upstream": {"nodes": {up.addr.to_string(): 1}}})
}

/// A standalone document of `routes` and `plugin_metadata`.
fn document(routes: &[Value], metadata: &[Value]) -> String {
    json!({"routes": routes, "plugin_metadata": metadata}).to_string()
}

/// `logger`'s counts in the node's status.
fn counts(pylon: &Pylon, logger: &str) -> Value {
    get(pylon.control.unwrap(), "localhost", "/v1/status").json()[logger].clone()
}

/// Sends a GET for `target` and checks it was proxied.
async fn request(protocol: Protocol, pylon: &Pylon, target: &str) {
    let res = call(protocol, pylon.addr, "GET", target, &[], b"").await;
    assert_eq!(res.status, 200, "{protocol:?} {target}: {}", res.text());
}

/// The requests `collector` got for `target`, once it has at least `n`.
fn posts(collector: &Upstream, target: &str, n: usize) -> Vec<Received> {
    let of_target = || {
        collector
            .received()
            .into_iter()
            .filter(|r| r.target == target)
            .collect::<Vec<_>>()
    };
    wait_until(|| of_target().len() >= n, &format!("{n} POSTs to {target}"));
    of_target()
}

/// The records of a JSON array, sorted by their `uri`: two workers may log two requests in
/// either order.
fn sorted(records: Value) -> Vec<Value> {
    let mut records = records.as_array().expect("a JSON array").clone();
    records.sort_by_key(|r| r["uri"].as_str().map(str::to_owned));
    records
}

/// An HTTP collector that answers every POST `200` and closes the connection.
fn collector_on(addr: SocketAddr) -> Upstream {
    Upstream::on(
        addr,
        "collector",
        Arc::new(|_, stream| {
            respond(stream, 200, &[("Connection", "close")], b"");
            false
        }),
    )
}

#[tokio::test]
async fn http_logger_posts_the_records_in_batches() {
    let up = Upstream::start("up");
    let collector = Upstream::start("collector");
    let logs = format!("http://{}/logs", collector.addr);
    let pylon = Pylon::start(
        &document(
            &[
                route(
                    "/batched",
                    &up,
                    "http-logger",
                    json!({"uri": format!("{logs}?r=batched"), "auth_header": "Bearer t",
                        "batch_max_size": 2, "inactive_timeout": 60,
                        "log_format": {"uri": "$request_uri", "status": "$status",
                            "upstream": "$upstream_addr", "route": "$route_id"}}),
                ),
                route(
                    "/lines",
                    &up,
                    "http-logger",
                    json!({"uri": format!("{logs}?r=lines"), "concat_method": "new_line",
                        "batch_max_size": 1}),
                ),
            ],
            &[
                json!({"id": "http-logger", "log_format": {"method": "$request_method", "uri": "$uri"}}),
            ],
        ),
        "",
    );
    for (i, protocol) in PROTOCOLS.into_iter().enumerate() {
        let what = format!("{protocol:?}");
        let targets = [format!("/batched?n={i}a"), format!("/batched?n={i}b")];
        for target in &targets {
            request(protocol, &pylon, target).await;
        }
        let batch = &posts(&collector, "/logs?r=batched", i + 1)[i];
        assert_eq!(batch.method, "POST", "{what}");
        assert_eq!(
            batch.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        assert_eq!(batch.header("authorization"), Some("Bearer t"), "{what}");
        let records = serde_json::from_slice(&batch.body).expect("a JSON body");
        let expected: Vec<_> = targets
            .iter()
            .map(|uri| {
                json!({"uri": uri, "status": "200", "upstream": up.addr.to_string(),
                    "route": "batched"})
            })
            .collect();
        assert_eq!(sorted(records), expected, "{what}");

        // No log_format of its own: the metadata's, one record per line.
        request(protocol, &pylon, &format!("/lines?n={i}")).await;
        let line = &posts(&collector, "/logs?r=lines", i + 1)[i];
        assert_eq!(line.header("content-type"), Some("text/plain"), "{what}");
        assert_eq!(line.header("authorization"), None, "{what}");
        assert_eq!(
            serde_json::from_slice::<Value>(&line.body).unwrap(),
            json!({"method": "GET", "uri": "/lines"}),
            "{what}"
        );
    }
    wait_until(
        || counts(&pylon, "http_logger")["sent"] == 6,
        "every record counted as sent",
    );
    let counts = counts(&pylon, "http_logger");
    assert_eq!(
        (&counts["dropped"], &counts["failed"], &counts["retried"]),
        (&json!(0), &json!(0), &json!(0))
    );
}

#[tokio::test]
async fn records_reach_a_collector_that_was_down_by_the_retries() {
    let up = Upstream::start("up");
    let addr = closed_addr();
    let pylon = Pylon::start(
        &document(
            &[route(
                "/r",
                &up,
                "http-logger",
                json!({"uri": format!("http://{addr}/logs"), "batch_max_size": 1,
                    "max_retry_count": 6, "retry_delay": 1,
                    "log_format": {"uri": "$request_uri"}}),
            )],
            &[],
        ),
        "",
    );
    for (i, protocol) in PROTOCOLS.into_iter().enumerate() {
        let what = format!("{protocol:?}");
        let retried = counts(&pylon, "http_logger")["retried"].as_u64().unwrap();
        let target = format!("/r?n={i}");
        // The request is answered at once, whatever becomes of its record.
        request(protocol, &pylon, &target).await;
        wait_until(
            || counts(&pylon, "http_logger")["retried"].as_u64() > Some(retried),
            "a failed try",
        );
        let collector = collector_on(addr);
        let post = &posts(&collector, "/logs", 1)[0];
        assert_eq!(
            serde_json::from_slice::<Value>(&post.body).unwrap(),
            json!([{ "uri": target }]),
            "{what}"
        );
    }
    wait_until(
        || counts(&pylon, "http_logger")["sent"] == 2,
        "both records counted as sent",
    );
    assert_eq!(counts(&pylon, "http_logger")["failed"], 0);
}

#[tokio::test]
async fn a_full_buffer_drops_and_counts_and_requests_go_on() {
    let up = Upstream::start("up");
    let released = Arc::new(AtomicBool::new(false));
    let hold = released.clone();
    // A collector that takes a POST and answers only once released.
    let collector = Upstream::with_handler(
        "collector",
        Arc::new(move |_, stream| {
            let deadline = Instant::now() + 6 * WAIT;
            while !hold.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            respond(stream, 200, &[], b"");
            true
        }),
    );
    let pylon = Pylon::start(
        &document(
            &[route(
                "/r",
                &up,
                "http-logger",
                json!({"uri": format!("http://{}/logs", collector.addr), "batch_max_size": 1,
                    "timeout": 60, "log_format": {"uri": "$request_uri"}}),
            )],
            &[json!({"id": "http-logger", "max_pending_entries": 1})],
        ),
        "",
    );
    request(Protocol::Http1, &pylon, "/r?n=0").await;
    wait_until(
        || collector.request_count() == 1,
        "the first record to be on its way",
    );
    // One record waits for the collector; the queue holds one more and drops the others.
    let more = [Protocol::Http2, Protocol::Http1, Protocol::Http2];
    for (i, protocol) in more.into_iter().enumerate() {
        request(protocol, &pylon, &format!("/r?n={}", i + 1)).await;
    }
    wait_until(
        || counts(&pylon, "http_logger")["dropped"] == 2,
        "two records dropped",
    );
    assert_eq!(counts(&pylon, "http_logger")["sent"], 0);

    released.store(true, Ordering::SeqCst);
    wait_until(
        || counts(&pylon, "http_logger")["sent"] == 2,
        "the held and the queued record sent",
    );
    let bodies: Vec<Value> = posts(&collector, "/logs", 2)
        .iter()
        .map(|post| serde_json::from_slice(&post.body).unwrap())
        .collect();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0], json!([{"uri": "/r?n=0"}]));
    assert!(
        ["/r?n=1", "/r?n=2", "/r?n=3"].contains(&bodies[1][0]["uri"].as_str().unwrap()),
        "{bodies:?}"
    );
    let counts = counts(&pylon, "http_logger");
    assert_eq!(
        (&counts["dropped"], &counts["failed"]),
        (&json!(2), &json!(0))
    );
}

/// The connections `receiver` has had closed, once it has at least `n`, each one's bytes
/// as JSON.
fn closed_connections(receiver: &TcpReceiver, n: usize) -> Vec<Value> {
    let closed = || {
        receiver
            .connections()
            .into_iter()
            .filter(|c| c.closed && !c.bytes.is_empty())
            .collect::<Vec<_>>()
    };
    wait_until(|| closed().len() >= n, &format!("{n} connections"));
    closed()
        .iter()
        .map(|c| serde_json::from_slice(&c.bytes).expect("a JSON text"))
        .collect()
}

#[tokio::test]
async fn tcp_logger_sends_each_batch_on_a_connection_and_retries_one_that_is_down() {
    let up = Upstream::start("up");
    let receiver = TcpReceiver::start();
    let down = closed_addr();
    let pylon = Pylon::start(
        &document(
            &[
                route(
                    "/tcp",
                    &up,
                    "tcp-logger",
                    json!({"host": "127.0.0.1", "port": receiver.addr.port(),
                        "batch_max_size": 2, "log_format": {"uri": "$request_uri"}}),
                ),
                route(
                    "/down",
                    &up,
                    "tcp-logger",
                    json!({"host": "127.0.0.1", "port": down.port(), "batch_max_size": 1,
                        "max_retry_count": 6, "retry_delay": 1,
                        "log_format": {"uri": "$request_uri"}}),
                ),
            ],
            &[],
        ),
        "",
    );
    for (i, protocol) in PROTOCOLS.into_iter().enumerate() {
        let what = format!("{protocol:?}");
        let targets = [format!("/tcp?n={i}a"), format!("/tcp?n={i}b")];
        for target in &targets {
            request(protocol, &pylon, target).await;
        }
        let batch = closed_connections(&receiver, i + 1)[i].clone();
        let expected: Vec<_> = targets.iter().map(|uri| json!({ "uri": uri })).collect();
        assert_eq!(sorted(batch), expected, "{what}");

        let retried = counts(&pylon, "tcp_logger")["retried"].as_u64().unwrap();
        let target = format!("/down?n={i}");
        request(protocol, &pylon, &target).await;
        wait_until(
            || counts(&pylon, "tcp_logger")["retried"].as_u64() > Some(retried),
            "a failed try",
        );
        let late = TcpReceiver::on(down);
        assert_eq!(
            closed_connections(&late, 1),
            [json!([{ "uri": target }])],
            "{what}"
        );
    }
    wait_until(
        || counts(&pylon, "tcp_logger")["sent"] == 6,
        "every record counted as sent",
    );
    assert_eq!(counts(&pylon, "tcp_logger")["failed"], 0);
}

#[tokio::test]
async fn udp_logger_sends_each_batch_as_a_datagram() {
    let up = Upstream::start("up");
    let receiver = UdpReceiver::start();
    let pylon = Pylon::start(
        &document(
            &[route(
                "/udp",
                &up,
                "udp-logger",
                json!({"host": "127.0.0.1", "port": receiver.addr.port(), "batch_max_size": 1}),
            )],
            &[
                json!({"id": "udp-logger", "log_format": {"uri": "$request_uri", "status": "$status"}}),
            ],
        ),
        "",
    );
    for (i, protocol) in PROTOCOLS.into_iter().enumerate() {
        let target = format!("/udp?n={i}");
        request(protocol, &pylon, &target).await;
        wait_until(|| receiver.datagrams().len() > i, "a datagram");
        let datagram: Value = serde_json::from_slice(&receiver.datagrams()[i]).unwrap();
        assert_eq!(
            datagram,
            json!([{"uri": target, "status": "200"}]),
            "{protocol:?}"
        );
    }
    wait_until(
        || counts(&pylon, "udp_logger")["sent"] == 2,
        "both records counted as sent",
    );
}

/// One RFC 5424 entry from pylon: its header checked, its message as JSON.
fn syslog_message(entry: &[u8], pylon: &Pylon) -> Value {
    let entry = std::str::from_utf8(entry).expect("UTF-8");
    let parts: Vec<&str> = entry.splitn(8, ' ').collect();
    assert_eq!(parts.len(), 8, "{entry}");
    assert_eq!(parts[0], "<46>1", "{entry}");
    assert!(
        parts[1].len() == 24 && parts[1].contains('T') && parts[1].ends_with('Z'),
        "a UTC timestamp with milliseconds: {entry}"
    );
    assert!(!parts[2].is_empty(), "{entry}");
    assert_eq!(
        &parts[3..7],
        ["pylon", &pylon.pid().to_string(), "-", "-"],
        "{entry}"
    );
    serde_json::from_str(parts[7]).expect("a JSON message")
}

/// Octet-counted entries (`LEN SP ENTRY`...), as far as they are whole.
fn octet_counted(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut entries = Vec::new();
    while let Some(space) = bytes.iter().position(|&b| b == b' ') {
        let len: usize = std::str::from_utf8(&bytes[..space])
            .ok()
            .and_then(|l| l.parse().ok())
            .expect("a length");
        let Some(entry) = bytes.get(space + 1..space + 1 + len) else {
            break;
        };
        entries.push(entry.to_vec());
        bytes = &bytes[space + 1 + len..];
    }
    entries
}

#[tokio::test]
async fn syslog_sends_rfc_5424_entries_over_tcp_and_udp() {
    let up = Upstream::start("up");
    let tcp = TcpReceiver::start();
    let udp = UdpReceiver::start();
    let syslog = |port: u16, sock_type: &str| {
        json!({"host": "127.0.0.1", "port": port, "sock_type": sock_type,
            "batch_max_size": 1, "log_format": {"uri": "$request_uri"}})
    };
    let pylon = Pylon::start(
        &document(
            &[
                route("/tcp", &up, "syslog", syslog(tcp.addr.port(), "tcp")),
                route("/udp", &up, "syslog", syslog(udp.addr.port(), "udp")),
            ],
            &[],
        ),
        "",
    );
    let tcp_entries = || {
        let bytes: Vec<u8> = tcp
            .connections()
            .into_iter()
            .flat_map(|c| c.bytes)
            .collect();
        octet_counted(&bytes)
    };
    for (i, protocol) in PROTOCOLS.into_iter().enumerate() {
        let what = format!("{protocol:?}");
        let target = format!("/tcp?n={i}");
        request(protocol, &pylon, &target).await;
        wait_until(|| tcp_entries().len() > i, "a syslog entry over TCP");
        assert_eq!(
            syslog_message(&tcp_entries()[i], &pylon),
            json!({ "uri": target }),
            "{what}"
        );

        let target = format!("/udp?n={i}");
        request(protocol, &pylon, &target).await;
        wait_until(|| udp.datagrams().len() > i, "a syslog entry over UDP");
        assert_eq!(
            syslog_message(&udp.datagrams()[i], &pylon),
            json!({ "uri": target }),
            "{what}"
        );
    }
    assert_eq!(tcp.connections().len(), 1, "one kept connection");
    wait_until(
        || counts(&pylon, "syslog")["sent"] == 4,
        "every entry counted as sent",
    );
}

#[test]
fn bad_logger_configurations_are_refused_with_their_field() {
    let (code, stdout, stderr) = validate(
        r#"
routes:
  - id: a
    uri: /a
    upstream: {nodes: {"127.0.0.1:1": 1}}
    plugins:
      http-logger: {uri: "https://logs.example/in"}
  - id: b
    uri: /b
    upstream: {nodes: {"127.0.0.1:1": 1}}
    plugins:
      syslog: {host: 127.0.0.1, port: 514, sock_type: sctp}
  - id: c
    uri: /c
    upstream: {nodes: {"127.0.0.1:1": 1}}
    plugins:
      tcp-logger: {host: 127.0.0.1, port: 5044, batch_max_size: 0}
plugin_metadata:
  - id: udp-logger
    max_pending_entries: 0
"#,
    );
    assert_ne!(code, Some(0), "stdout: {stdout}");
    for expected in [
        "plugins.http-logger.uri: https is not supported yet",
        "plugins.syslog.sock_type: unknown variant `sctp`",
        "plugins.tcp-logger.batch_max_size: must be at least 1",
        "plugin_metadata[0].max_pending_entries: must be at least 1",
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in:\n{stderr}");
    }
}
