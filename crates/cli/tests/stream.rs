//! The L4 (stream) proxy end to end: `proxy.stream.tcp` listeners (plain, TLS-terminating,
//! behind a PROXY protocol load balancer) relay connections by `stream_routes` to echoing
//! upstreams: bytes and half-closes both ways, routing, upstream choice and retries, the PROXY
//! protocol in and out, `ip-restriction` and `limit-conn`, the idle timeout, the access log and
//! metrics, a restart, and stream routes written through the Admin API.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;

use serde_json::{json, Value};
use support::client::admin;
use support::proxy_header::{v1, v2};
use support::stream::{
    closed_unanswered, config, connect, exchange, exchange_on, is_closed_unanswered, listener,
    logged_as, reports, round_robin, EchoUpstream,
};
use support::tls::{client_config, ssl_yaml, TestCa};
use support::{closed_port, wait_until, Pylon};

const PLAIN: &str = "{addr: \"127.0.0.1:0\"}";
const TLS: &str = "{addr: \"127.0.0.1:0\", tls: true}";
const PROXIED: &str = "{addr: \"127.0.0.1:0\", proxy_protocol: true}";

/// The client a trusted load balancer names in its PROXY header, and the address it says the
/// client reached.
const CLIENT: &str = "203.0.113.7:40123";
const BALANCED: &str = "192.0.2.1:443";

/// `proxy.stream` with `listeners` (flow mappings, as written in the node config) and `extra`
/// lines of it, the PROXY protocol trusted from loopback.
fn stream_node(listeners: &[&str], extra: &str) -> String {
    let listeners: String = listeners.iter().map(|l| format!("      - {l}\n")).collect();
    format!(
        "  stream:\n    tcp:\n{listeners}{extra}  proxy_protocol:\n    trusted: [\"127.0.0.1\"]\n"
    )
}

/// Pylon with the stream `listeners` and the standalone config `config`.
fn start(config: &str, listeners: &[&str]) -> Pylon {
    Pylon::start(config, &stream_node(listeners, ""))
}

/// A round-robin upstream over `nodes`.
fn upstream(nodes: &[SocketAddr]) -> Value {
    round_robin(nodes, json!({}))
}

#[test]
fn bytes_and_half_closes_go_both_ways_and_are_logged_and_counted() {
    let up = EchoUpstream::start("echo");
    let route = json!({"id": "echo", "upstream": upstream(&[up.addr])});
    let pylon = start(&config(&[route]), &[PLAIN, TLS, PROXIED]);
    let kinds: Vec<&str> = pylon.stream_addrs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["tcp", "tcp+tls", "tcp+proxy"],
        "{:?}",
        pylon.startup
    );

    // A MiB each way: more than any buffer on the way holds, so it streams. The upstream's
    // name comes after the echo, sent only once the client's end reached it.
    const MIB: usize = 1 << 20;
    let sent: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    let answer = exchange(listener(&pylon, 0), &sent);
    assert_eq!(answer.len(), MIB + up.name.len());
    assert!(answer == up.answer(&sent), "the echo came back intact");
    let connections = up.connections();
    assert_eq!(connections.len(), 1);
    assert!(connections[0].bytes == sent);

    let line = logged_as(&pylon, Some("echo"), 200);
    assert_eq!(line["method"], "TCP");
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["upstream_addr"], up.addr.to_string());
    assert_eq!(line["request_length"], MIB);
    assert_eq!(line["bytes_sent"], MIB + up.name.len());
    assert!(line.get("failure").is_none(), "{line}");

    for sample in [
        "pylon_stream_connections_total{status=\"200\"} 1".to_owned(),
        format!("pylon_stream_bytes_total{{direction=\"from_client\"}} {MIB}"),
        format!(
            "pylon_stream_bytes_total{{direction=\"from_upstream\"}} {}",
            MIB + up.name.len()
        ),
        // How long it lasted: within a day, whatever the machine's pace.
        "pylon_stream_session_duration_seconds_count 1".to_owned(),
        "pylon_stream_session_duration_seconds_bucket{le=\"86400\"} 1".to_owned(),
    ] {
        wait_until(|| reports(&pylon, &sample), &sample);
    }
}

#[test]
fn routes_take_connections_by_port_addresses_and_specificity() {
    let [a, b, c, d] = ["a", "b", "c", "d"].map(EchoUpstream::start);
    let never = EchoUpstream::start("never");
    let pylon = start(&config(&[]), &[PLAIN, PLAIN, PLAIN]);
    let [one, two, three] = [0, 1, 2].map(|i| listener(&pylon, i));
    let by_port = |id: &str, port: u16, up: &EchoUpstream| json!({"id": id, "server_port": port, "upstream": upstream(&[up.addr])});
    pylon.reload(&config(&[
        by_port("one", one.port(), &a),
        by_port("two", two.port(), &b),
    ]));
    assert_eq!(exchange(one, b"x"), a.answer(b"x"));
    assert_eq!(exchange(two, b"x"), b.answer(b"x"));
    // No route takes the third listener's connections: closed, nothing sent, logged 404.
    assert!(closed_unanswered(three, b"x"));
    let line = logged_as(&pylon, None, 404);
    assert_eq!(line["method"], "TCP");
    assert_eq!(line["upstream_addr"], Value::Null);

    // A route with more conditions is tried first; one that does not hold is passed over.
    let more = |id: &str, port: u16, fields: Value, up: &EchoUpstream| {
        let mut route = by_port(id, port, up);
        route
            .as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        route
    };
    pylon.reload(&config(&[
        by_port("one", one.port(), &a),
        by_port("two", two.port(), &b),
        more(
            "two-local",
            two.port(),
            json!({"remote_addr": "127.0.0.1/32"}),
            &c,
        ),
        more(
            "two-far",
            two.port(),
            json!({"remote_addr": "10.0.0.0/8", "server_addr": "127.0.0.1"}),
            &never,
        ),
        more(
            "one-here",
            one.port(),
            json!({"server_addr": "127.0.0.1"}),
            &d,
        ),
        more(
            "one-there",
            one.port(),
            json!({"server_addr": "10.0.0.0/8", "remote_addr": "127.0.0.1"}),
            &never,
        ),
    ]));
    assert_eq!(exchange(two, b"y"), c.answer(b"y"));
    assert_eq!(exchange(one, b"y"), d.answer(b"y"));
    assert!(closed_unanswered(three, b"y"));
    assert!(never.connections().is_empty());
    logged_as(&pylon, Some("two-local"), 200);
    logged_as(&pylon, Some("one-here"), 200);
}

#[test]
fn connections_go_to_a_node_that_takes_them() {
    let live = EchoUpstream::start("live");
    let (dead, also_dead) = (closed_port(), closed_port());
    let retried = json!({
        "id": "retried",
        "upstream": {"type": "roundrobin", "retries": 1,
                     "nodes": {dead.addr.to_string(): 1, live.addr.to_string(): 1}},
    });
    let pylon = start(&config(&[retried]), &[PLAIN, PROXIED]);
    let (plain, proxied) = (listener(&pylon, 0), listener(&pylon, 1));
    // Whichever node the balancer picks first, the connection reaches the live one.
    for i in 0..6u8 {
        assert_eq!(exchange(plain, &[i]), live.answer(&[i]), "connection {i}");
    }
    assert_eq!(live.connections().len(), 6);
    let lines = pylon.wait_access_log(6);
    assert!(
        lines
            .iter()
            .all(|line| line["upstream_addr"] == live.addr.to_string()),
        "{lines:?}"
    );

    // With no node to take it, the connection is closed and logged 502.
    let nowhere = json!({
        "id": "nowhere",
        "upstream": {"type": "roundrobin", "retries": 1,
                     "nodes": {dead.addr.to_string(): 1, also_dead.addr.to_string(): 1}},
    });
    pylon.reload(&config(&[nowhere]));
    assert!(closed_unanswered(plain, b"x"));
    let line = logged_as(&pylon, Some("nowhere"), 502);
    assert_eq!(line["failure"], "upstream_connect");

    // `chash` on the client's address: each client stays on its node; clients spread.
    let nodes = ["n1", "n2", "n3"].map(EchoUpstream::start);
    let hashed = json!({
        "id": "hashed",
        "upstream": {"type": "chash", "hash_on": "vars", "key": "remote_addr",
                     "nodes": upstream(&nodes.each_ref().map(|n| n.addr))["nodes"]},
    });
    pylon.reload(&config(&[hashed]));
    let node_of = |client: &str| {
        let mut sent = v2(client, BALANCED);
        sent.extend_from_slice(b"who");
        let answer = exchange(proxied, &sent);
        let name = answer.strip_prefix(b"who").expect("the echo first");
        String::from_utf8(name.to_vec()).unwrap()
    };
    let mut used = std::collections::BTreeSet::new();
    for i in 1..=20 {
        let client = format!("198.51.100.{i}:5000");
        let first = node_of(&client);
        for _ in 0..2 {
            assert_eq!(node_of(&client), first, "{client}");
        }
        used.insert(first);
    }
    // Twenty clients hashed onto one of three nodes by chance: about one run in 10^9.
    assert!(used.len() > 1, "20 clients all on {used:?}");
}

#[test]
fn an_upstream_that_asks_for_a_proxy_header_gets_it_before_the_clients_bytes() {
    let up = EchoUpstream::start("up");
    let pylon = start(&config(&[]), &[PLAIN, PLAIN]);
    let (for_v1, for_v2) = (listener(&pylon, 0), listener(&pylon, 1));
    let route = |id: &str, port: u16, version: &str| {
        json!({"id": id, "server_port": port, "upstream_proxy_protocol": version,
               "upstream": upstream(&[up.addr])})
    };
    pylon.reload(&config(&[
        route("v1", for_v1.port(), "v1"),
        route("v2", for_v2.port(), "v2"),
    ]));
    for (listener, header) in [(for_v1, v1 as fn(&str, &str) -> Vec<u8>), (for_v2, v2)] {
        let stream = connect(listener);
        let client = stream.local_addr().unwrap();
        let expected = [
            header(&client.to_string(), &listener.to_string()),
            b"hello".to_vec(),
        ]
        .concat();
        // The echo carries the header back too: all the upstream read, in order.
        assert_eq!(exchange_on(stream, b"hello"), up.answer(&expected));
        let received = up.connections().pop().unwrap().bytes;
        assert_eq!(received, expected, "{}", String::from_utf8_lossy(&received));
    }
}

#[test]
fn the_client_a_proxy_header_names_is_the_client() {
    let (clients, others) = (
        EchoUpstream::start("clients"),
        EchoUpstream::start("others"),
    );
    let routes = [
        json!({"id": "clients", "remote_addr": "203.0.113.0/24", "upstream_proxy_protocol": "v1",
               "upstream": upstream(&[clients.addr])}),
        json!({"id": "others", "upstream": upstream(&[others.addr])}),
    ];
    let pylon = start(&config(&routes), &[PROXIED]);
    let proxied = listener(&pylon, 0);
    let sent = [v2(CLIENT, BALANCED), b"hello".to_vec()].concat();
    let answer = exchange(proxied, &sent);
    // What the upstream hears names the client the load balancer named, and the listener
    // the connection reached.
    let header = v1(CLIENT, &proxied.to_string());
    let heard = [header.as_slice(), b"hello"].concat();
    assert_eq!(answer, clients.answer(&heard));
    assert_eq!(clients.connections()[0].bytes, heard);
    let line = logged_as(&pylon, Some("clients"), 200);
    assert_eq!(line["client_ip"], "203.0.113.7");

    // Another client named by the header is another route's.
    let sent = [v2("198.51.100.9:5000", BALANCED), b"hi".to_vec()].concat();
    assert_eq!(exchange(proxied, &sent), others.answer(b"hi"));

    // A connection without a header is closed, and reaches no upstream.
    assert!(closed_unanswered(proxied, b"GET / HTTP/1.1\r\n\r\n"));
    assert_eq!(clients.connections().len(), 1);
    assert_eq!(others.connections().len(), 1);
}

#[test]
fn ip_restriction_and_limit_conn_close_what_they_refuse() {
    let up = EchoUpstream::start("up");
    let pylon = start(&config(&[]), &[PLAIN, PLAIN, PLAIN]);
    let [denied, allowed, limited] = [0, 1, 2].map(|i| listener(&pylon, i));
    let route = |id: &str, listener: SocketAddr, plugins: Value| {
        json!({"id": id, "server_port": listener.port(), "plugins": plugins,
               "upstream": upstream(&[up.addr])})
    };
    pylon.reload(&config(&[
        route(
            "denied",
            denied,
            json!({"ip-restriction": {"blacklist": ["127.0.0.1"]}}),
        ),
        route(
            "allowed",
            allowed,
            json!({"ip-restriction": {"whitelist": ["127.0.0.0/8"]}}),
        ),
        route(
            "limited",
            limited,
            json!({"limit-conn": {"conn": 1, "burst": 0, "default_conn_delay": 0.1,
                                  "key": "remote_addr"}}),
        ),
    ]));
    assert!(closed_unanswered(denied, b"x"));
    logged_as(&pylon, Some("denied"), 403);
    assert_eq!(exchange(allowed, b"x"), up.answer(b"x"));
    assert_eq!(
        up.connections().len(),
        1,
        "the refused one reached no upstream"
    );

    // One connection held open (its echo shows it was relayed); a second is refused.
    let mut held = connect(limited);
    held.write_all(b"held").unwrap();
    let mut echo = [0u8; 4];
    held.read_exact(&mut echo).unwrap();
    assert!(closed_unanswered(limited, b"x"));
    logged_as(&pylon, Some("limited"), 503);
    // Once the first ends, a new one is relayed.
    held.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    held.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, up.name.as_bytes());
    logged_as(&pylon, Some("limited"), 200);
    assert_eq!(exchange(limited, b"next"), up.answer(b"next"));
}

#[test]
fn a_tls_listener_terminates_tls_and_routes_by_server_name() {
    let ca = TestCa::new("test ca");
    let (exact, wildcard) = (
        EchoUpstream::start("exact"),
        EchoUpstream::start("wildcard"),
    );
    let routes = config(&[
        json!({"id": "exact", "sni": "a.example.com", "upstream": upstream(&[exact.addr])}),
        json!({"id": "wildcard", "sni": "*.example.org", "upstream": upstream(&[wildcard.addr])}),
    ]);
    let ssls = [
        ssl_yaml("1", &["a.example.com"], &ca.issue(&["a.example.com"]), ""),
        ssl_yaml("2", &["*.example.org"], &ca.issue(&["*.example.org"]), ""),
    ]
    .concat();
    let pylon = start(&format!("{routes}ssls:\n{ssls}"), &[TLS]);
    let addr = listener(&pylon, 0);
    // A client that would speak HTTP/2 if the gateway chose it: the bytes go to a TCP
    // upstream, and no protocol is chosen for them.
    let config = client_config(ca.roots(), &["h2", "http/1.1"]);
    for (name, up) in [("a.example.com", &exact), ("b.example.org", &wildcard)] {
        let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let conn = rustls::ClientConnection::new(config.clone(), server).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, connect(addr));
        tls.write_all(b"hello").unwrap();
        // The client ends its side with a close_notify; the answer still comes after it.
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, up.answer(b"hello"), "{name}");
        assert_eq!(tls.conn.alpn_protocol(), None, "{name}");
        // The upstream reads the bytes in clear.
        assert_eq!(up.connections()[0].bytes, b"hello", "{name}");
        let line = logged_as(&pylon, Some(up.name.as_str()), 200);
        assert_eq!(line["host"], name);
    }
    assert_eq!(exact.connections().len(), 1);
    assert_eq!(wildcard.connections().len(), 1);
}

#[test]
fn a_plain_listener_passes_tls_through_by_the_server_name_it_asks_for() {
    let ca = TestCa::new("test ca");
    let (exact, wildcard, other) = (
        EchoUpstream::start("exact"),
        EchoUpstream::start("wildcard"),
        EchoUpstream::start("other"),
    );
    let routes = config(&[
        json!({"id": "exact", "sni": "a.example.com", "upstream": upstream(&[exact.addr])}),
        json!({"id": "wildcard", "sni": "*.example.org", "upstream": upstream(&[wildcard.addr])}),
        json!({"id": "other", "upstream": upstream(&[other.addr])}),
    ]);
    let pylon = start(&routes, &[PLAIN]);
    let addr = listener(&pylon, 0);
    // A client that would speak HTTP/2 if the gateway chose it: the bytes go to a TCP
    // upstream, and no protocol is chosen for them.
    let config = client_config(ca.roots(), &["h2", "http/1.1"]);
    for (name, up) in [("a.example.com", &exact), ("b.example.org", &wildcard)] {
        let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut client = rustls::ClientConnection::new(config.clone(), server).unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        // Untouched: the upstream gets the very ClientHello, and answers the client directly.
        assert_eq!(exchange(addr, &hello), up.answer(&hello), "{name}");
        assert_eq!(up.connections()[0].bytes, hello, "{name}");
        let line = logged_as(&pylon, Some(up.name.as_str()), 200);
        assert_eq!(line["host"], name);
    }
    // Anything else on the listener goes by the other routes, its first bytes intact.
    assert_eq!(exchange(addr, b"hello"), other.answer(b"hello"));
    assert_eq!(other.connections()[0].bytes, b"hello");
}

#[test]
fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let up = EchoUpstream::start("up");
    let route = json!({"id": "idle", "upstream": upstream(&[up.addr])});
    let pylon = Pylon::start(
        &config(&[route]),
        &stream_node(&[PLAIN], "    idle_timeout: 1\n"),
    );
    let mut silent = connect(listener(&pylon, 0));
    assert!(is_closed_unanswered(&mut silent));
    let line = logged_as(&pylon, Some("idle"), 200);
    assert_eq!(line["failure"], "idle_timeout");
    assert_eq!(
        (&line["request_length"], &line["bytes_sent"]),
        (&json!(0), &json!(0))
    );
}

#[test]
fn without_half_close_the_first_side_to_end_ends_both() {
    let up = EchoUpstream::start("up");
    let route = json!({"id": "whole", "upstream": upstream(&[up.addr])});
    let pylon = Pylon::start(
        &config(&[route]),
        &stream_node(&[PLAIN], "    half_close: false\n"),
    );
    // The client's end closes the upstream's connection too: the upstream, which answers
    // its name only once it sees the client's end, gets no chance to send it.
    let answer = exchange(listener(&pylon, 0), b"hello");
    assert!(b"hello".starts_with(&answer), "{answer:?}");
    let line = logged_as(&pylon, Some("whole"), 200);
    assert_eq!(line["request_length"], 5);
    assert!(line.get("failure").is_none(), "{line}");
    let ended = || up.connections().first().is_some_and(|c| c.closed);
    wait_until(ended, "the upstream to see the connection end");
    assert_eq!(up.connections()[0].bytes, b"hello");
}

#[test]
fn a_restart_hands_the_stream_listeners_over() {
    let up = EchoUpstream::start("up");
    let routes = config(&[json!({"id": "echo", "upstream": upstream(&[up.addr])})]);
    let mut pylon = start(&routes, &[PLAIN]);
    let addr = listener(&pylon, 0);
    let listen = format!("{{addr: \"{addr}\"}}");
    let next = pylon.successor(&routes, &stream_node(&[&listen], ""));
    assert!(
        next.startup.iter().any(|line| line.contains("took over")),
        "{:?}",
        next.startup
    );
    assert_eq!(next.stream_addrs, [("tcp".to_owned(), addr)]);
    // The old one drains and exits: whatever answers now is the successor, on the very
    // socket (nothing else could have bound it).
    let (code, _) = pylon.wait_exit();
    assert_eq!(code, Some(0));
    assert_eq!(exchange(addr, b"again"), up.answer(b"again"));
    logged_as(&next, Some("echo"), 200);
}

// === the Admin API ===

const ADMIN_KEY: &str = "test-admin-key";

/// A node on the embedded store with an Admin API, a plain stream listener and an access log.
fn admin_node() -> Pylon {
    let node = format!(
        "proxy:\n  listen: [\"127.0.0.1:0\"]\n  workers: 1\n{}\
         access_log:\n  path: access.log\n\
         control:\n  listen: \"127.0.0.1:0\"\n\
         metrics:\n  listen: \"127.0.0.1:0\"\n\
         admin:\n  listen: \"127.0.0.1:0\"\n  admin_key:\n    - {{name: admin, key: {ADMIN_KEY}, role: admin}}\n\
         config:\n  source: embedded\n  data_dir: data\n\
         log:\n  level: info\n",
        stream_node(&[PLAIN], "")
    );
    Pylon::run_node(tempfile::tempdir().unwrap(), &node)
        .unwrap_or_else(|e| panic!("pylon did not start: {e}"))
}

fn put(pylon: &Pylon, path: &str, body: &Value) -> support::client::Response {
    admin(pylon.admin.unwrap(), ADMIN_KEY, "PUT", path, Some(body))
}

#[test]
fn stream_routes_written_through_the_admin_api_are_served_and_bad_ones_refused() {
    let (first, second) = (EchoUpstream::start("first"), EchoUpstream::start("second"));
    let pylon = admin_node();
    let addr = listener(&pylon, 0);
    assert!(closed_unanswered(addr, b"x"), "no stream route yet");
    let route = json!({"upstream": upstream(&[first.addr])});
    let res = put(&pylon, "/apisix/admin/stream_routes/1", &route);
    assert_eq!(res.status, 201, "{}", res.text());
    wait_until(
        || exchange(addr, b"x") == first.answer(b"x"),
        "the stream route to be served",
    );
    // A change is served without a restart.
    let route = json!({"upstream": upstream(&[second.addr])});
    let res = put(&pylon, "/apisix/admin/stream_routes/1", &route);
    assert_eq!(res.status, 200, "{}", res.text());
    wait_until(
        || exchange(addr, b"x") == second.answer(b"x"),
        "the changed stream route to be served",
    );
    let stored = admin(
        pylon.admin.unwrap(),
        ADMIN_KEY,
        "GET",
        "/apisix/admin/stream_routes/1",
        None,
    )
    .json()["value"]
        .clone();

    // Each refusal names the field and the reason; the route stays as it was, and is served
    // as it was.
    let nodes = upstream(&[first.addr]);
    let stream_route = "/apisix/admin/stream_routes/1";
    let refused = [
        (
            stream_route,
            json!({"remote_addr": "not-an-address", "upstream": nodes}),
            "remote_addr: `not-an-address` is not an IP address or CIDR",
        ),
        (
            stream_route,
            json!({"upstream": {"scheme": "grpc", "nodes": nodes["nodes"]}}),
            "upstream.scheme: `grpc` is for HTTP routes; a stream route's upstream is `tcp`, `tls` or `udp`",
        ),
        (
            stream_route,
            json!({"protocol": {"name": "redis"}, "upstream": nodes}),
            "protocol.name: `redis` is not a protocol of this build; it has `pylon-frames` and `pylon-push`",
        ),
        (
            stream_route,
            json!({"plugins": {"cors": {}}, "upstream": nodes}),
            "plugins.cors: does not run on stream routes, which run ip-restriction and limit-conn",
        ),
        (
            "/apisix/admin/routes/1",
            json!({"uri": "/", "upstream": {"scheme": "tcp", "nodes": nodes["nodes"]}}),
            "upstream.scheme: its upstream's scheme `tcp` is for stream routes; an HTTP route's upstream speaks http, https, grpc or grpcs",
        ),
    ];
    let served_as_before = |after: &Value| {
        let now = admin(pylon.admin.unwrap(), ADMIN_KEY, "GET", stream_route, None);
        assert_eq!(now.json()["value"], stored, "after {after}");
        assert_eq!(exchange(addr, b"x"), second.answer(b"x"), "after {after}");
    };
    for (path, body, reason) in refused {
        let res = put(&pylon, path, &body);
        assert_eq!(res.status, 400, "{body}: {}", res.text());
        assert_eq!(
            res.json()["error_msg"],
            format!("invalid configuration: {reason}"),
            "{body}"
        );
        served_as_before(&body);
    }

    // `limit-conn` counts by an address on a stream route: anything else is refused when
    // written, and the route serves as before.
    let by_header = json!({
        "plugins": {"limit-conn": {"conn": 1, "burst": 0, "default_conn_delay": 0.1,
                                   "key": "http_x_real_ip"}},
        "upstream": nodes,
    });
    let reason = "plugins.limit-conn.key: a stream route counts by `remote_addr` or `server_addr`, not `http_x_real_ip`";
    let res = put(&pylon, stream_route, &by_header);
    assert_eq!(res.status, 400, "{}", res.text());
    assert_eq!(
        res.json()["error_msg"],
        format!("invalid configuration: {reason}")
    );
    served_as_before(&by_header);
}
