//! Load balancing, retries, timeouts and upstream keep-alive through the real gateway.
//!
//! Balancer state is per worker, so tests that count exact shares run pylon with one worker.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use support::client::{get, Conn, Response};
use support::upstream::{named, respond, Gate, Handler, Upstream};
use support::{closed_port, wait_until, Pylon, WAIT};

const ONE_WORKER: &str = "  workers: 1\n";

/// Who answered: the upstream's name, or the gateway's own status.
fn who(res: &Response) -> String {
    res.header("x-upstream")
        .map_or_else(|| res.status.to_string(), str::to_owned)
}

/// Sends `n` GETs for `target`, each on a new connection, and counts who answered.
fn tally(pylon: &Pylon, target: &str, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts
            .entry(who(&get(pylon.addr, "example.com", target)))
            .or_default() += 1;
    }
    counts
}

/// A node in APISIX's list form.
fn node(addr: SocketAddr, weight: u32, priority: i32) -> String {
    format!(
        "{{host: \"{}\", port: {}, weight: {weight}, priority: {priority}}}",
        addr.ip(),
        addr.port()
    )
}

fn refuses(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
}

/// Stops `up` and waits until its port refuses connections.
fn bring_down(up: Upstream) -> SocketAddr {
    let addr = up.addr;
    up.stop();
    wait_until(|| refuses(addr), "the node to refuse connections");
    addr
}

/// Answers `/slow...` only once `gate` opens, anything else at once.
fn holding(name: &str, gate: &Gate) -> Handler {
    let (name, gate) = (name.to_owned(), gate.clone());
    Arc::new(move |req, stream| {
        if req.target.starts_with("/slow") {
            gate.wait();
        }
        respond(stream, 200, &[("X-Upstream", &name)], name.as_bytes());
        true
    })
}

/// Sends a GET on its own thread; the response comes through the channel.
fn get_in_background(addr: SocketAddr, target: &str) -> mpsc::Receiver<Response> {
    let (tx, rx) = mpsc::channel();
    let target = target.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(get(addr, "example.com", &target));
    });
    rx
}

#[test]
fn roundrobin_shares_follow_the_weights_exactly() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let routes = format!(
        "routes:\n  - {{id: r, uri: /rr, upstream: {{type: roundrobin, nodes: {{\"{}\": 3, \"{}\": 1}}}}}}\n",
        a.addr, b.addr
    );
    let pylon = Pylon::start(&routes, ONE_WORKER);

    let counts = tally(&pylon, "/rr", 40);
    assert_eq!(counts.get("a"), Some(&30), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");
}

#[test]
fn chash_keeps_each_key_on_its_node_and_moves_only_a_removed_nodes_keys() {
    let ups: Vec<Upstream> = (0..4).map(|i| Upstream::start(&format!("n{i}"))).collect();
    let config = |ups: &[&Upstream]| {
        let nodes: Vec<String> = ups.iter().map(|u| u.node()).collect();
        let nodes = nodes.join(", ");
        format!(
            "upstreams:\n\
             \x20 - {{id: by-arg, type: chash, hash_on: vars, key: arg_user, nodes: {{{nodes}}}}}\n\
             \x20 - {{id: by-header, type: chash, hash_on: header, key: X-User, nodes: {{{nodes}}}}}\n\
             \x20 - {{id: by-cookie, type: chash, hash_on: cookie, key: sid, nodes: {{{nodes}}}}}\n\
             routes:\n\
             \x20 - {{id: arg, uri: /arg, upstream_id: by-arg}}\n\
             \x20 - {{id: header, uri: /header, upstream_id: by-header}}\n\
             \x20 - {{id: cookie, uri: /cookie, upstream_id: by-cookie}}\n"
        )
    };
    let pylon = Pylon::start(&config(&ups.iter().collect::<Vec<_>>()), "");
    let users: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    let by_arg = |user: &str| {
        who(&get(
            pylon.addr,
            "example.com",
            &format!("/arg?user={user}"),
        ))
    };

    // The same key always lands on the same node (on either worker: the ring is shared).
    let before: HashMap<&str, String> = users.iter().map(|u| (u.as_str(), by_arg(u))).collect();
    for user in &users {
        assert_eq!(by_arg(user), before[user.as_str()], "{user}");
    }
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for node in before.values() {
        *per_node.entry(node).or_default() += 1;
    }
    assert!(per_node.len() > 1, "the keys spread: {per_node:?}");

    // A header or a cookie as the key works the same way.
    for (target, header) in [("/header", "X-User"), ("/cookie", "Cookie: sid")] {
        let mut seen = HashMap::new();
        for user in &users[..20] {
            let line = if header == "X-User" {
                format!("X-User: {user}\r\n")
            } else {
                format!("Cookie: theme=dark; sid={user}\r\n")
            };
            let raw = format!("GET {target} HTTP/1.1\r\nHost: example.com\r\n{line}\r\n");
            let first = who(&Conn::connect(pylon.addr).request(raw.as_bytes()));
            assert!(first.starts_with('n'), "{target}: {first}");
            for _ in 0..2 {
                let again = who(&Conn::connect(pylon.addr).request(raw.as_bytes()));
                assert_eq!(again, first, "{target} {user}");
            }
            seen.insert(first, ());
        }
        assert!(seen.len() > 1, "{target}: the keys spread");
    }

    // Remove the node holding the most keys; only its keys move.
    let (&gone, _) = per_node.iter().max_by_key(|(_, n)| **n).unwrap();
    let gone = gone.to_owned();
    let remaining: Vec<&Upstream> = ups.iter().filter(|u| u.name != gone).collect();
    pylon.reload(&config(&remaining));
    for user in &users {
        let now = by_arg(user);
        if before[user.as_str()] == gone {
            assert_ne!(now, gone, "{user} still goes to the removed node");
            assert!(now.starts_with('n'), "{user}: {now}");
        } else {
            assert_eq!(
                now,
                before[user.as_str()],
                "{user} moved though its node stayed"
            );
        }
    }
}

#[test]
fn least_conn_sends_new_requests_to_the_idle_node() {
    let gate = Gate::default();
    let a = Upstream::with_handler("a", holding("a", &gate));
    let b = Upstream::with_handler("b", holding("b", &gate));
    let routes = format!(
        "routes:\n  - {{id: r, uri: /*, upstream: {{type: least_conn, nodes: {{{}, {}}}}}}}\n",
        a.node(),
        b.node()
    );
    let pylon = Pylon::start(&routes, ONE_WORKER);

    let slow = get_in_background(pylon.addr, "/slow");
    wait_until(
        || a.request_count() + b.request_count() == 1,
        "the slow request to reach a node",
    );
    let (busy, idle) = if a.request_count() == 1 {
        ("a", "b")
    } else {
        ("b", "a")
    };
    let counts = tally(&pylon, "/fast", 10);
    assert_eq!(counts.get(idle), Some(&10), "{busy} is busy: {counts:?}");

    gate.open();
    let res = slow.recv_timeout(WAIT).unwrap();
    assert_eq!((res.status, who(&res)), (200, busy.to_owned()));
    // Both idle again: they take turns.
    let counts = tally(&pylon, "/fast", 10);
    assert_eq!((counts.get("a"), counts.get("b")), (Some(&5), Some(&5)));
}

#[test]
fn least_conn_counts_stay_right_across_a_config_reload() {
    let gate = Gate::default();
    let a = Upstream::with_handler("a", holding("a", &gate));
    let b = Upstream::with_handler("b", holding("b", &gate));
    let other = Upstream::start("other");
    let config = |extra_route: bool| {
        let mut yaml = format!(
            "routes:\n  - {{id: r, uri: /*, upstream: {{type: least_conn, nodes: {{{}, {}}}}}}}\n",
            a.node(),
            b.node()
        );
        if extra_route {
            yaml.push_str(&format!(
                "  - {{id: other, uri: /other, upstream: {{nodes: {{{}}}}}}}\n",
                other.node()
            ));
        }
        yaml
    };
    let pylon = Pylon::start(&config(false), ONE_WORKER);

    let slow = get_in_background(pylon.addr, "/slow");
    wait_until(
        || a.request_count() + b.request_count() == 1,
        "the slow request to reach a node",
    );
    let busy = if a.request_count() == 1 { "a" } else { "b" };

    // A change to another route keeps this upstream's balancer state: the busy node stays busy.
    pylon.reload(&config(true));
    let counts = tally(&pylon, "/fast", 4);
    assert_eq!(counts.get(busy), None, "{busy} is busy: {counts:?}");

    // The request that started before the reload ends after it: the node is idle again, and
    // must be seen so (not counted busy for ever).
    gate.open();
    assert_eq!(slow.recv_timeout(WAIT).unwrap().status, 200);
    let counts = tally(&pylon, "/fast", 10);
    assert_eq!(
        (counts.get("a"), counts.get("b")),
        (Some(&5), Some(&5)),
        "both idle nodes take turns"
    );
}

#[test]
fn the_backup_tier_serves_only_while_every_primary_node_is_down() {
    let p1 = Upstream::start("p1");
    let p2 = Upstream::start("p2");
    let backup = Upstream::start("backup");
    let routes = format!(
        "routes:\n  - id: r\n    uri: /t\n    upstream:\n      nodes:\n        - {}\n        - {}\n        - {}\n",
        node(p1.addr, 1, 0),
        node(p2.addr, 1, 0),
        node(backup.addr, 1, -1),
    );
    let pylon = Pylon::start(&routes, "");

    let counts = tally(&pylon, "/t", 10);
    assert_eq!(
        counts.get("p1").unwrap_or(&0) + counts.get("p2").unwrap_or(&0),
        10,
        "{counts:?}"
    );

    // One primary down: the other primary takes everything, the backup still nothing.
    let p1_addr = bring_down(p1);
    let counts = tally(&pylon, "/t", 10);
    assert_eq!(counts.get("p2"), Some(&10), "{counts:?}");
    assert_eq!(backup.request_count(), 0);

    // Every primary down: the backup serves, and no request fails.
    let _p2_addr = bring_down(p2);
    let counts = tally(&pylon, "/t", 10);
    assert_eq!(counts.get("backup"), Some(&10), "{counts:?}");

    // A primary comes back on its port: it takes over again.
    let p1 = Upstream::on(p1_addr, "p1", named("p1"));
    let counts = tally(&pylon, "/t", 10);
    assert_eq!(counts.get("p1"), Some(&10), "{counts:?}");
    assert_eq!(p1.request_count(), 10);
    assert_eq!(backup.request_count(), 10);
}

#[test]
fn a_refused_connection_is_retried_on_another_node() {
    let live = Upstream::start("live");
    let dead = closed_port();
    let routes = format!(
        "routes:\n  - {{id: r, uri: /t, upstream: {{nodes: {{\"{}\": 1, {}}}}}}}\n",
        dead.addr,
        live.node()
    );
    let pylon = Pylon::start(&routes, "");

    let counts = tally(&pylon, "/t", 20);
    assert_eq!(counts.get("live"), Some(&20), "{counts:?}");
    assert_eq!(live.request_count(), 20, "each request reached it once");
}

#[test]
fn retries_try_each_node_once_and_then_give_up_with_502() {
    // Each node reads the request and closes the connection without answering.
    let hang_up: Handler = Arc::new(|_, _| false);
    let nodes: Vec<Upstream> = (0..3)
        .map(|i| Upstream::with_handler(&format!("x{i}"), hang_up.clone()))
        .collect();
    let list: Vec<String> = nodes.iter().map(Upstream::node).collect();
    let routes = format!(
        "routes:\n  - {{id: r, uri: /t, upstream: {{nodes: {{{}}}}}}}\n",
        list.join(", ")
    );
    let pylon = Pylon::start(&routes, "");

    let res = get(pylon.addr, "example.com", "/t");
    assert_eq!(res.status, 502);
    assert_eq!(
        res.json(),
        serde_json::json!({"error_msg": "502 Bad Gateway"})
    );
    let attempts: Vec<usize> = nodes.iter().map(Upstream::request_count).collect();
    assert_eq!(attempts, [1, 1, 1], "one attempt per node");
}

#[test]
fn retries_zero_means_a_failed_attempt_is_not_retried() {
    let closer = Upstream::with_handler("closer", Arc::new(|_, _| false));
    let live = Upstream::start("live");
    let routes = format!(
        "routes:\n  - id: r\n    uri: /t\n    upstream:\n      retries: 0\n      nodes:\n        - {}\n        - {}\n",
        node(closer.addr, 1, 0),
        node(live.addr, 1, 0),
    );
    let pylon = Pylon::start(&routes, ONE_WORKER);

    // Round robin alternates: every other request meets the failing node, and stays failed.
    let counts = tally(&pylon, "/t", 10);
    assert_eq!(
        (counts.get("502"), counts.get("live")),
        (Some(&5), Some(&5)),
        "{counts:?}"
    );
    assert_eq!((closer.request_count(), live.request_count()), (5, 5));
}

/// A node that reads a request head and `body_bytes` bytes of body, reports it, waits for
/// more body to arrive and then closes with those bytes unread: the kernel resets the
/// connection. Counts the connections it gets.
struct Resetter {
    addr: SocketAddr,
    attempts: Arc<AtomicUsize>,
    read_part: mpsc::Receiver<()>,
}

impl Resetter {
    fn start(body_bytes: usize) -> Resetter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let attempts = Arc::new(AtomicUsize::new(0));
        let (tx, read_part) = mpsc::channel();
        let counter = attempts.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                stream.set_read_timeout(Some(WAIT)).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 16 * 1024];
                let done = |buf: &[u8]| {
                    buf.windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .is_some_and(|end| buf.len() - (end + 4) >= body_bytes)
                };
                while !done(&buf) {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = tx.send(());
                let _ = stream.peek(&mut chunk[..1]);
                drop(stream);
            }
        });
        Resetter {
            addr,
            attempts,
            read_part,
        }
    }
}

#[test]
fn a_streamed_post_is_not_replayed_after_the_upstream_reset_it() {
    const CHUNK: usize = 16 * 1024;
    const CHUNKS: usize = 16;
    let chunk = format!("{CHUNK:x}\r\n{}\r\n", "x".repeat(CHUNK));
    let first_part = chunk.repeat(CHUNKS);
    let resetter = Resetter::start(first_part.len());
    // The backup would take a replay: it must never see the request.
    let backup = Upstream::start("backup");
    let routes = format!(
        "routes:\n  - id: r\n    uri: /upload\n    upstream:\n      nodes:\n        - {}\n        - {}\n",
        node(resetter.addr, 1, 1),
        node(backup.addr, 1, 0),
    );
    let pylon = Pylon::start(&routes, "");

    let mut conn = Conn::connect(pylon.addr);
    conn.send(b"POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n");
    conn.send(first_part.as_bytes());
    resetter
        .read_part
        .recv_timeout(WAIT)
        .expect("the node to read the first part of the body");
    // More body: the node resets the connection with it unread. The gateway may already have
    // answered and stopped reading, so these writes may fail; the answer must still arrive.
    let _ = conn.stream.write_all(b"400\r\n");
    let _ = conn.stream.write_all(&[b'y'; 0x400]);
    let _ = conn.stream.write_all(b"\r\n");
    let res = conn.read_response().unwrap();
    assert_eq!(res.status, 502, "{}", res.text());
    assert_eq!(resetter.attempts.load(Ordering::SeqCst), 1);
    assert_eq!(backup.request_count(), 0, "the request was replayed");
}

#[test]
fn read_timeout_is_504_and_a_route_timeout_overrides_the_upstreams() {
    let gate = Gate::default();
    let handler: Handler = {
        let gate = gate.clone();
        Arc::new(move |req, stream| {
            match req.target.as_str() {
                "/hold" | "/hold-too" => gate.wait(),
                _ => std::thread::sleep(Duration::from_millis(1000)),
            }
            respond(stream, 200, &[("X-Upstream", "slow")], b"slow");
            true
        })
    };
    let slow = Upstream::with_handler("slow", handler);
    let routes = format!(
        "upstreams:\n\
         \x20 - {{id: short, timeout: {{connect: 1, send: 1, read: 0.5}}, nodes: {{{node}}}}}\n\
         \x20 - {{id: long, timeout: {{connect: 1, send: 1, read: 30}}, nodes: {{{node}}}}}\n\
         routes:\n\
         \x20 - {{id: hold, uri: /hold, upstream_id: short}}\n\
         \x20 - {{id: patient, uri: /sleep, upstream_id: short, timeout: {{connect: 1, send: 1, read: 8}}}}\n\
         \x20 - {{id: impatient, uri: /hold-too, upstream_id: long, timeout: {{connect: 1, send: 1, read: 0.5}}}}\n",
        node = slow.node()
    );
    let pylon = Pylon::start(&routes, "");

    // The upstream's read timeout.
    let res = get(pylon.addr, "example.com", "/hold");
    assert_eq!(res.status, 504);
    assert_eq!(
        res.json(),
        serde_json::json!({"error_msg": "504 Gateway Timeout"})
    );
    // The route's, longer than the upstream's: the slow answer gets through.
    let res = get(pylon.addr, "example.com", "/sleep");
    assert_eq!((res.status, res.text().as_str()), (200, "slow"));
    // The route's, shorter than the upstream's.
    let res = get(pylon.addr, "example.com", "/hold-too");
    assert_eq!(res.status, 504);
    gate.open();
    // A timed-out request is not sent again (a single node: no retry).
    assert_eq!(slow.request_count(), 3);
}

#[test]
fn upstream_connections_are_reused_up_to_keepalive_pool_requests() {
    let pooled = Upstream::start("pooled");
    let capped = Upstream::start("capped");
    let routes = format!(
        "routes:\n\
         \x20 - {{id: pooled, uri: /pooled, upstream: {{nodes: {{{}}}}}}}\n\
         \x20 - {{id: capped, uri: /capped, upstream: {{keepalive_pool: {{size: 4, idle_timeout: 30, requests: 2}}, nodes: {{{}}}}}}}\n",
        pooled.node(),
        capped.node()
    );
    let pylon = Pylon::start(&routes, ONE_WORKER);

    // Sequential requests, each on a new client connection, share one upstream connection.
    for _ in 0..10 {
        assert_eq!(get(pylon.addr, "example.com", "/pooled").status, 200);
    }
    assert_eq!(pooled.connection_count(), 1);
    assert!(pooled.received().iter().all(|r| r.connection == 0));

    // At most 2 requests per connection.
    for _ in 0..10 {
        assert_eq!(get(pylon.addr, "example.com", "/capped").status, 200);
    }
    assert_eq!(capped.connection_count(), 5);
    let connections: Vec<usize> = capped.received().iter().map(|r| r.connection).collect();
    assert_eq!(connections, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
}

#[test]
fn a_post_the_upstream_dropped_without_answer_is_not_sent_again() {
    // Each node reads the whole request and closes the connection without answering: it may
    // have acted on it, so a non-idempotent request must not go to the next node.
    let hang_up: Handler = Arc::new(|_, _| false);
    let first = Upstream::with_handler("first", hang_up.clone());
    let second = Upstream::with_handler("second", hang_up);
    let routes = format!(
        "routes:\n  - id: r\n    uri: /order\n    upstream:\n      nodes:\n        - {}\n        - {}\n",
        node(first.addr, 1, 1),
        node(second.addr, 1, 0),
    );
    let pylon = Pylon::start(&routes, "");

    let res = Conn::connect(pylon.addr)
        .request(b"POST /order HTTP/1.1\r\nHost: example.com\r\nContent-Length: 7\r\n\r\nbuy one");
    assert_eq!(res.status, 502);
    assert_eq!(first.received()[0].body, b"buy one");
    assert_eq!(
        first.request_count() + second.request_count(),
        1,
        "the POST was sent again"
    );
}
