//! The L4 proxy on datagrams end to end: `proxy.stream.udp` listeners relay a session per
//! client address by `stream_routes` to answering upstreams: both ways, many clients at once,
//! routing, a refusing node passed over, the idle end of a session, `ip-restriction`, the
//! access log and metrics, a restart, and the `udp` scheme refused on HTTP routes.

mod support;

use std::net::SocketAddr;

use serde_json::{json, Value};
use support::datagram::{refusing_port, UdpClient, UdpEcho};
use support::stream::{config, exchange, listener, logged_as, reports, round_robin, EchoUpstream};
use support::{wait_until, Pylon};

const UDP: &str = "{addr: \"127.0.0.1:0\"}";

/// `proxy.stream` with the UDP `listeners` (flow mappings, as written in the node config),
/// sessions ending after a second of silence.
fn udp_node(listeners: &[&str]) -> String {
    let listeners: String = listeners.iter().map(|l| format!("      - {l}\n")).collect();
    format!("  stream:\n    udp:\n{listeners}    udp_idle_timeout: 1\n")
}

/// Pylon with the UDP `listeners` and the standalone config `config`.
fn start(config: &str, listeners: &[&str]) -> Pylon {
    Pylon::start(config, &udp_node(listeners))
}

/// A round-robin `udp` upstream over `nodes`.
fn upstream(nodes: &[SocketAddr]) -> Value {
    round_robin(nodes, json!({"scheme": "udp"}))
}

#[test]
fn datagrams_go_both_ways_each_client_gets_its_own_and_sessions_are_logged_and_counted() {
    let up = UdpEcho::start("echo");
    let route = json!({"id": "echo", "upstream": upstream(&[up.addr])});
    let pylon = start(&config(&[route]), &[UDP]);
    assert_eq!(pylon.stream_addrs[0].0, "udp", "{:?}", pylon.startup);
    let addr = listener(&pylon, 0);

    // Each datagram whole, each answer back to its sender; a large one too.
    let client = UdpClient::new(addr);
    let large: Vec<u8> = (0..60_000).map(|i| (i % 251) as u8).collect();
    for datagram in [&b"one"[..], b"two", &large] {
        assert!(
            client.ask(datagram) == up.answer(datagram),
            "the answer came back intact"
        );
    }
    // The session's datagrams reached the node from one socket: one session.
    let sources: std::collections::BTreeSet<_> =
        up.received().iter().map(|(from, _)| *from).collect();
    assert_eq!(sources.len(), 1, "{sources:?}");

    // Many clients at once, each with its own session and answers.
    const CLIENTS: usize = 16;
    const EACH: usize = 5;
    let clients: Vec<std::thread::JoinHandle<()>> = (0..CLIENTS)
        .map(|c| {
            let expected_name = up.name.clone();
            std::thread::spawn(move || {
                let client = UdpClient::new(addr);
                for i in 0..EACH {
                    let datagram = format!("client {c} datagram {i}").into_bytes();
                    let answer = client.ask(&datagram);
                    assert_eq!(answer, [expected_name.as_bytes(), b":", &datagram].concat());
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    let sources: std::collections::BTreeSet<_> =
        up.received().iter().map(|(from, _)| *from).collect();
    assert_eq!(
        sources.len(),
        CLIENTS + 1,
        "a socket to the node per session"
    );

    // One line per session, once it has been quiet for the idle timeout.
    let lines = pylon.wait_access_log(CLIENTS + 1);
    assert_eq!(lines.len(), CLIENTS + 1, "{lines:?}");
    let first = lines
        .iter()
        .find(|line| line["request_length"] == 6 + large.len())
        .expect("the first client's line");
    assert_eq!(first["method"], "UDP");
    assert_eq!(first["status"], 200);
    assert_eq!(first["route_id"], "echo");
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(first["upstream_addr"], up.addr.to_string());
    assert_eq!(first["request_length"], 6 + large.len());
    assert_eq!(first["bytes_sent"], 6 + large.len() + 3 * "echo:".len());
    assert!(first.get("failure").is_none(), "{first}");

    let sessions = CLIENTS + 1;
    let per_client: usize = (0..CLIENTS)
        .flat_map(|c| (0..EACH).map(move |i| format!("client {c} datagram {i}").len()))
        .sum();
    let from_client = 6 + large.len() + per_client;
    let from_upstream = from_client + (3 + CLIENTS * EACH) * "echo:".len();
    for sample in [
        format!("pylon_stream_connections_total{{status=\"200\"}} {sessions}"),
        format!("pylon_stream_bytes_total{{direction=\"from_client\"}} {from_client}"),
        format!("pylon_stream_bytes_total{{direction=\"from_upstream\"}} {from_upstream}"),
    ] {
        wait_until(|| reports(&pylon, &sample), &sample);
    }
}

#[test]
fn routes_take_sessions_by_port_and_client_address_and_unrouted_ones_get_nothing() {
    let [a, b, local] = ["a", "b", "local"].map(UdpEcho::start);
    let never = UdpEcho::start("never");
    let pylon = start(&config(&[]), &[UDP, UDP, UDP]);
    let [one, two, three] = [0, 1, 2].map(|i| listener(&pylon, i));
    let by_port = |id: &str, port: u16, up: &UdpEcho, extra: Value| {
        let mut route = json!({"id": id, "server_port": port, "upstream": upstream(&[up.addr])});
        let fields = route.as_object_mut().unwrap();
        fields.extend(extra.as_object().unwrap().clone());
        route
    };
    pylon.reload(&config(&[
        by_port("one", one.port(), &a, json!({})),
        by_port("two", two.port(), &b, json!({})),
        // More conditions: tried first, taken when they hold.
        by_port(
            "two-local",
            two.port(),
            &local,
            json!({"remote_addr": "127.0.0.0/8"}),
        ),
        by_port(
            "one-far",
            one.port(),
            &never,
            json!({"remote_addr": "10.0.0.0/8"}),
        ),
        // A route by server name never takes a datagram.
        by_port(
            "three-named",
            three.port(),
            &never,
            json!({"sni": "a.example.com"}),
        ),
    ]));
    assert_eq!(UdpClient::new(one).ask(b"x"), a.answer(b"x"));
    assert_eq!(UdpClient::new(two).ask(b"y"), local.answer(b"y"));
    logged_as(&pylon, Some("one"), 200);
    logged_as(&pylon, Some("two-local"), 200);

    // No route takes the third listener's datagrams: nothing is answered, the session is
    // logged 404 (and once it is, no answer can come any more).
    let unrouted = UdpClient::new(three);
    unrouted.send(b"z");
    let line = logged_as(&pylon, None, 404);
    assert_eq!(line["method"], "UDP");
    assert_eq!(line["upstream_addr"], Value::Null);
    assert!(!unrouted.has_mail());
    assert!(never.received().is_empty());
    assert!(b.received().is_empty());
}

#[test]
fn a_node_that_refuses_datagrams_is_passed_over_and_none_left_is_a_502() {
    let live = UdpEcho::start("live");
    let (dead, also_dead) = (refusing_port(), refusing_port());
    let retried = json!({
        "id": "retried",
        "upstream": {"type": "roundrobin", "scheme": "udp", "retries": 1,
                     "nodes": {dead.addr.to_string(): 1, live.addr.to_string(): 1}},
    });
    let pylon = start(&config(&[retried]), &[UDP]);
    let addr = listener(&pylon, 0);
    // Whichever node the balancer picks first, the session reaches the live one, its first
    // datagram included.
    for i in 0..6u8 {
        assert_eq!(
            UdpClient::new(addr).ask(&[i]),
            live.answer(&[i]),
            "session {i}"
        );
    }
    let lines = pylon.wait_access_log(6);
    assert!(
        lines
            .iter()
            .all(|line| line["upstream_addr"] == live.addr.to_string() && line["status"] == 200),
        "{lines:?}"
    );

    // With no node to take it, the session ends unanswered and is logged 502.
    let nowhere = json!({
        "id": "nowhere",
        "upstream": {"type": "roundrobin", "scheme": "udp", "retries": 1,
                     "nodes": {dead.addr.to_string(): 1, also_dead.addr.to_string(): 1}},
    });
    pylon.reload(&config(&[nowhere]));
    let client = UdpClient::new(addr);
    client.send(b"x");
    let line = logged_as(&pylon, Some("nowhere"), 502);
    assert_eq!(line["failure"], "upstream_refused");
    assert!(!client.has_mail());
}

#[test]
fn a_quiet_session_ends_and_the_clients_next_datagram_opens_another() {
    let up = UdpEcho::start("up");
    let route = json!({"id": "idle", "upstream": upstream(&[up.addr])});
    let pylon = start(&config(&[route]), &[UDP]);
    let client = UdpClient::new(listener(&pylon, 0));
    assert_eq!(client.ask(b"first"), up.answer(b"first"));
    assert_eq!(client.ask(b"again"), up.answer(b"again"));
    // Quiet for the idle timeout: the session ends, with its line.
    let line = logged_as(&pylon, Some("idle"), 200);
    assert_eq!(line["request_length"], 10);
    assert!(line.get("failure").is_none(), "{line}");

    // The same client's next datagram is a new session, on a new socket to the node.
    assert_eq!(client.ask(b"later"), up.answer(b"later"));
    let lines = pylon.wait_access_log(2);
    assert_eq!(lines[1]["request_length"], 5);
    let received = up.received();
    assert_eq!(received.len(), 3);
    assert_eq!(received[0].0, received[1].0, "one session, one socket");
    assert_ne!(received[1].0, received[2].0, "a new session, a new socket");
}

#[test]
fn ip_restriction_and_limit_conn_refuse_sessions_unanswered() {
    let up = UdpEcho::start("up");
    let pylon = start(&config(&[]), &[UDP, UDP, UDP]);
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
    let refused = UdpClient::new(denied);
    refused.send(b"x");
    logged_as(&pylon, Some("denied"), 403);
    assert!(!refused.has_mail());
    assert_eq!(UdpClient::new(allowed).ask(b"x"), up.answer(b"x"));
    assert_eq!(
        up.received().len(),
        1,
        "the refused one reached no upstream"
    );

    // `limit-conn` counts sessions: one open (it has its answer), a second client from the
    // same address is refused.
    let first = UdpClient::new(limited);
    assert_eq!(first.ask(b"first"), up.answer(b"first"));
    let second = UdpClient::new(limited);
    second.send(b"second");
    logged_as(&pylon, Some("limited"), 503);
    assert!(!second.has_mail());
    // Once the first session has ended, the second client's next datagram opens one.
    logged_as(&pylon, Some("limited"), 200);
    assert_eq!(second.ask(b"again"), up.answer(b"again"));
}

#[test]
fn a_route_takes_the_transport_its_upstream_names() {
    let (datagrams, connections) = (UdpEcho::start("datagrams"), EchoUpstream::start("tcp"));
    let node = format!("  stream:\n    tcp: [{UDP}]\n    udp: [{UDP}]\n");
    let pylon = Pylon::start(&config(&[]), &node);
    let kinds: Vec<&str> = pylon.stream_addrs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["tcp", "udp"]);
    let (tcp, udp) = (listener(&pylon, 0), listener(&pylon, 1));
    // Either route tried first (equal conditions: by id), each transport finds its own.
    for (udp_id, tcp_id) in [("1", "2"), ("2", "1")] {
        pylon.reload(&config(&[
            json!({"id": udp_id, "upstream": upstream(&[datagrams.addr])}),
            json!({"id": tcp_id, "upstream": {"scheme": "tcp",
                   "nodes": {connections.addr.to_string(): 1}}}),
        ]));
        assert_eq!(UdpClient::new(udp).ask(b"d"), datagrams.answer(b"d"));
        assert_eq!(exchange(tcp, b"c"), connections.answer(b"c"));
    }
}

#[test]
fn a_restart_hands_the_udp_sockets_over() {
    let up = UdpEcho::start("up");
    let routes = config(&[json!({"id": "echo", "upstream": upstream(&[up.addr])})]);
    let mut pylon = start(&routes, &[UDP]);
    let addr = listener(&pylon, 0);
    assert_eq!(UdpClient::new(addr).ask(b"before"), up.answer(b"before"));
    let listen = format!("{{addr: \"{addr}\"}}");
    let next = pylon.successor(&routes, &udp_node(&[&listen]));
    assert!(
        next.startup.iter().any(|line| line.contains("took over")),
        "{:?}",
        next.startup
    );
    assert_eq!(next.stream_addrs, [("udp".to_owned(), addr)]);
    // The old one exits: whatever answers now is the successor, on the very socket (nothing
    // else could have bound it).
    let (code, _) = pylon.wait_exit();
    assert_eq!(code, Some(0));
    assert_eq!(UdpClient::new(addr).ask(b"after"), up.answer(b"after"));
    logged_as(&next, Some("echo"), 200);
}

#[test]
fn the_udp_scheme_is_refused_on_http_routes_and_a_bad_idle_timeout_on_the_node() {
    let up = UdpEcho::start("up");
    let http_route = format!(
        "routes:\n  - {{id: r, uri: /, upstream: {{scheme: udp, nodes: {{\"{}\": 1}}}}}}\n",
        up.addr
    );
    let err = Pylon::try_start(&http_route, "")
        .err()
        .expect("pylon must not start with a udp upstream on an HTTP route");
    let reason = "routes[0].upstream.scheme: its upstream's scheme `udp` is for stream routes; an HTTP route's upstream speaks http, https, grpc or grpcs";
    assert!(err.contains(reason), "{err}");

    let node = udp_node(&[UDP]).replace("udp_idle_timeout: 1", "udp_idle_timeout: 0");
    let err = Pylon::try_start(&config(&[]), &node)
        .err()
        .expect("pylon must not start with a zero idle timeout");
    assert!(
        err.contains("proxy.stream.udp_idle_timeout: must be a number of seconds > 0"),
        "{err}"
    );
}
