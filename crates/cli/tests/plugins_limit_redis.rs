//! The limiting plugins' Redis policies through real gateway nodes and real Redis, over
//! HTTP/1.1 and HTTP/2 alike: three nodes sharing one Redis (and a three-master Redis
//! Cluster) admit exactly the configured count between them under concurrent clients;
//! `limit-req` and `limit-conn` are cluster-wide too; and when Redis stops, requests are let
//! through or refused as `allow_degradation` says, counted, until Redis is back.
//!
//! Windows are a minute long: nothing resets while a test runs.

mod support;

#[path = "../../redis/tests/support/redis_server.rs"]
mod redis_server;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use redis_server::{RedisCluster, RedisServer};
use serde_json::{json, Value};
use support::client::get;
use support::protocols::{call, Protocol, PROTOCOLS};
use support::upstream::{respond, Gate, Received, Upstream};
use support::{wait_until, Pylon};

/// Requests each client thread sends.
const PER_CLIENT: usize = 25;
/// Client threads per node.
const CLIENTS_PER_NODE: usize = 4;

fn routes(routes: &[Value]) -> String {
    json!({ "routes": routes }).to_string()
}

fn route(id: &str, up: &Upstream, plugins: Value) -> Value {
    json!({"id": id, "uri": format!("/{id}"), "plugins": plugins,
        "upstream": {"nodes": {up.addr.to_string(): 1}}})
}

/// `nodes` gateway nodes serving `routes`, each on its own ports.
fn start_nodes(nodes: usize, routes: &str) -> Vec<Pylon> {
    (0..nodes).map(|_| Pylon::start(routes, "")).collect()
}

/// Sends `PER_CLIENT` requests for `uri` from each of `CLIENTS_PER_NODE` threads per node,
/// all at once, over `protocol`: the statuses, in no order.
fn flood(nodes: &[Pylon], protocol: Protocol, uri: &str) -> Vec<u16> {
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let threads: Vec<_> = addrs
        .iter()
        .flat_map(|&addr| (0..CLIENTS_PER_NODE).map(move |_| addr))
        .map(|addr| {
            let uri = uri.to_owned();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let mut statuses = Vec::new();
                    for _ in 0..PER_CLIENT {
                        statuses.push(call(protocol, addr, "GET", &uri, &[], b"").await.status);
                    }
                    statuses
                })
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("a client thread"))
        .collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

/// Three nodes share one count in `policy`'s Redis: of 300 concurrent requests per protocol
/// across them, exactly `count` are let through and the rest refused.
fn assert_shared_count(policy: Value) {
    let up = Upstream::start("up");
    let limit = |window_type: &str| {
        let mut config = json!({"count": 100, "time_window": 60, "window_type": window_type,
            "key_type": "constant", "key": "all", "rejected_code": 429});
        config
            .as_object_mut()
            .unwrap()
            .extend(policy.as_object().unwrap().clone());
        json!({ "limit-count": config })
    };
    let mut configured = Vec::new();
    for protocol in PROTOCOLS {
        for window_type in ["fixed", "sliding"] {
            let id = format!("{protocol:?}-{window_type}");
            configured.push(route(&id, &up, limit(window_type)));
        }
    }
    let nodes = start_nodes(3, &routes(&configured));
    for protocol in PROTOCOLS {
        for window_type in ["fixed", "sliding"] {
            let statuses = flood(&nodes, protocol, &format!("/{protocol:?}-{window_type}"));
            assert_eq!(statuses.len(), 300);
            assert_eq!(
                (count(&statuses, 200), count(&statuses, 429)),
                (100, 200),
                "{protocol:?} {window_type}: let through, refused"
            );
        }
    }
}

#[test]
fn three_nodes_sharing_one_redis_admit_exactly_the_count() {
    let redis = RedisServer::start();
    assert_shared_count(json!({"policy": "redis", "redis_host": "127.0.0.1",
        "redis_port": redis.port}));
}

#[test]
fn three_nodes_sharing_a_redis_cluster_admit_exactly_the_count() {
    let cluster = RedisCluster::start();
    assert_shared_count(
        json!({"policy": "redis-cluster", "redis_cluster_name": "test",
        "redis_cluster_nodes": cluster.addresses()}),
    );
    // The counters went to their slots' masters, not all to one.
    let keys = cluster.sum(&["dbsize"]);
    assert_eq!(keys, 4, "one counter per route");
}

#[test]
fn limit_req_shares_one_bucket_between_nodes() {
    let redis = RedisServer::start();
    let up = Upstream::start("up");
    // One request a minute with a burst of 9, let through at once: ten in all.
    let limit = json!({"limit-req": {"rate": 1.0 / 60.0, "burst": 9, "nodelay": true,
        "key_type": "constant", "key": "all", "rejected_code": 429,
        "policy": "redis", "redis_host": "127.0.0.1", "redis_port": redis.port}});
    let configured: Vec<Value> = PROTOCOLS
        .iter()
        .map(|p| route(&format!("{p:?}"), &up, limit.clone()))
        .collect();
    let nodes = start_nodes(3, &routes(&configured));
    for protocol in PROTOCOLS {
        let statuses = flood(&nodes, protocol, &format!("/{protocol:?}"));
        assert_eq!(
            (count(&statuses, 200), count(&statuses, 429)),
            (10, 290),
            "{protocol:?}: let through, refused"
        );
    }
}

// Two threads: the held request runs while the test waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_conn_counts_requests_in_flight_on_every_node_and_gives_places_back() {
    let redis = RedisServer::start();
    // A gate per protocol: a gate opens only once.
    let gates = PROTOCOLS.map(|_| Gate::default());
    let held = Arc::new(AtomicUsize::new(0));
    let up = {
        let (gates, held) = (gates.clone(), held.clone());
        Upstream::with_handler(
            "slow",
            Arc::new(move |request: &Received, stream: &mut TcpStream| {
                if request.target.ends_with("/hold") {
                    held.fetch_add(1, Ordering::SeqCst);
                    let protocol = usize::from(request.target.starts_with("/Http2"));
                    gates[protocol].wait();
                }
                respond(stream, 200, &[], b"done");
                true
            }),
        )
    };
    let limit = json!({"limit-conn": {"conn": 1, "burst": 0, "default_conn_delay": 0.1,
        "key_type": "constant", "key": "all", "rejected_code": 429,
        "policy": "redis", "redis_host": "127.0.0.1", "redis_port": redis.port}});
    let configured: Vec<Value> = PROTOCOLS
        .iter()
        .map(|p| {
            let id = format!("{p:?}");
            json!({"id": id, "uris": [format!("/{id}"), format!("/{id}/hold")],
                "plugins": limit.clone(), "upstream": {"nodes": {up.addr.to_string(): 1}}})
        })
        .collect();
    let nodes = start_nodes(2, &routes(&configured));
    for (protocol, gate) in PROTOCOLS.into_iter().zip(&gates) {
        let id = format!("{protocol:?}");
        // A request held upstream through node 0 takes the one place...
        let first = {
            let (addr, uri) = (nodes[0].addr, format!("/{id}/hold"));
            tokio::spawn(async move { call(protocol, addr, "GET", &uri, &[], b"").await })
        };
        let before = held.load(Ordering::SeqCst);
        wait_until(
            || held.load(Ordering::SeqCst) > before || first.is_finished(),
            "the first request reaches the upstream",
        );
        // ...so node 1 refuses the next.
        let refused = call(protocol, nodes[1].addr, "GET", &format!("/{id}"), &[], b"").await;
        assert_eq!(
            refused.status, 429,
            "{protocol:?}: a second request in flight"
        );
        gate.open();
        assert_eq!(first.await.unwrap().status, 200);
        // The place is given back without the request waiting for it: soon, not at once.
        let mut status = 0;
        for _ in 0..100 {
            status = call(protocol, nodes[1].addr, "GET", &format!("/{id}"), &[], b"")
                .await
                .status;
            if status == 200 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(status, 200, "{protocol:?}: the place was given back");
    }
}

/// `/v1/status` of `node`.
fn status(node: &Pylon) -> Value {
    get(node.control.unwrap(), "localhost", "/v1/status").json()
}

/// What `node`'s metrics say of the reachability of the Redis on `port`.
fn redis_reachable_metric(node: &Pylon, port: u16) -> Option<String> {
    let text = get(node.metrics.unwrap(), "localhost", "/metrics").text();
    let sample = format!("pylon_redis_reachable{{name=\"127.0.0.1:{port}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&sample))
        .map(str::to_owned)
}

#[tokio::test]
async fn when_redis_stops_allow_degradation_decides_and_limiting_resumes_when_it_is_back() {
    let mut redis = RedisServer::start();
    let up = Upstream::start("up");
    let limit = |allow: bool| {
        json!({"limit-count": {"count": 2, "time_window": 60, "key_type": "constant",
            "key": "all", "rejected_code": 429, "allow_degradation": allow,
            "policy": "redis", "redis_host": "127.0.0.1", "redis_port": redis.port,
            "redis_timeout": 500}})
    };
    let mut configured = Vec::new();
    for protocol in PROTOCOLS {
        configured.push(route(&format!("{protocol:?}-open"), &up, limit(true)));
        configured.push(route(&format!("{protocol:?}-closed"), &up, limit(false)));
    }
    // One worker, so that a request that finds Redis again shows that every request will.
    let node = Pylon::start(&routes(&configured), "  workers: 1\n");
    let statuses = |protocol: Protocol, uri: String, n: usize| {
        let addr = node.addr;
        async move {
            let mut statuses = Vec::new();
            for _ in 0..n {
                statuses.push(call(protocol, addr, "GET", &uri, &[], b"").await.status);
            }
            statuses
        }
    };
    for protocol in PROTOCOLS {
        for mode in ["open", "closed"] {
            let uri = format!("/{protocol:?}-{mode}");
            assert_eq!(statuses(protocol, uri, 3).await, [200, 200, 429], "{mode}");
        }
    }
    assert_eq!(status(&node)["redis"][0]["reachable"], json!(true));

    redis.stop();
    for protocol in PROTOCOLS {
        let open = statuses(protocol, format!("/{protocol:?}-open"), 3).await;
        assert_eq!(open, [200, 200, 200], "{protocol:?}: fail open");
        let closed = statuses(protocol, format!("/{protocol:?}-closed"), 3).await;
        assert_eq!(closed, [500, 500, 500], "{protocol:?}: fail closed");
    }
    let report = status(&node);
    assert_eq!(report["redis"][0]["reachable"], json!(false), "{report}");
    assert_eq!(
        redis_reachable_metric(&node, redis.port).as_deref(),
        Some("0")
    );
    assert_eq!(
        report["plugin_call_failures"],
        json!({"let_through": 6, "refused": 6}),
        "{report}"
    );

    // Back, and empty: each route counts afresh. The first calls after the restart may
    // still find the old connection gone, which the closed route shows.
    redis.restart();
    for protocol in PROTOCOLS {
        let closed = format!("/{protocol:?}-closed");
        let mut got = Vec::new();
        for _ in 0..100 {
            got = statuses(protocol, closed.clone(), 1).await;
            if got == [200] {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(got, [200], "{protocol:?}: Redis is used again");
        assert_eq!(
            statuses(protocol, closed, 2).await,
            [200, 429],
            "{protocol:?}"
        );
        let open = format!("/{protocol:?}-open");
        assert_eq!(
            statuses(protocol, open, 3).await,
            [200, 200, 429],
            "{protocol:?}"
        );
    }
    assert_eq!(status(&node)["redis"][0]["reachable"], json!(true));
    assert_eq!(
        redis_reachable_metric(&node, redis.port).as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn redis_counts_carry_the_quota_headers_and_groups_share_one_count_between_routes() {
    let redis = RedisServer::start();
    let up = Upstream::start("up");
    let limit = |group: Option<&str>| {
        let mut config = json!({"count": 2, "time_window": 60, "key_type": "constant",
            "key": "all", "rejected_code": 429, "policy": "redis", "redis_host": "127.0.0.1",
            "redis_port": redis.port});
        if let Some(group) = group {
            config["group"] = json!(group);
        }
        json!({ "limit-count": config })
    };
    let mut configured = Vec::new();
    for protocol in PROTOCOLS {
        configured.push(route(&format!("{protocol:?}"), &up, limit(None)));
        for n in 1..=2 {
            let group = format!("{protocol:?}-group");
            configured.push(route(&format!("{group}-{n}"), &up, limit(Some(&group))));
        }
    }
    let nodes = start_nodes(2, &routes(&configured));
    for protocol in PROTOCOLS {
        let uri = format!("/{protocol:?}");
        for (n, (status, remaining)) in [(200, "1"), (200, "0"), (429, "0")].into_iter().enumerate()
        {
            let res = call(protocol, nodes[n % 2].addr, "GET", &uri, &[], b"").await;
            assert_eq!(res.status, status, "{protocol:?} request {n}");
            assert_eq!(res.header("x-ratelimit-limit"), Some("2"));
            assert_eq!(res.header("x-ratelimit-remaining"), Some(remaining));
            let reset: u64 = res.header("x-ratelimit-reset").unwrap().parse().unwrap();
            assert!((1..=60).contains(&reset), "reset in {reset} s");
        }
        // Two routes of one group, through two nodes: one count of two.
        let group = format!("/{protocol:?}-group");
        let statuses = [
            call(
                protocol,
                nodes[0].addr,
                "GET",
                &format!("{group}-1"),
                &[],
                b"",
            )
            .await
            .status,
            call(
                protocol,
                nodes[1].addr,
                "GET",
                &format!("{group}-2"),
                &[],
                b"",
            )
            .await
            .status,
            call(
                protocol,
                nodes[0].addr,
                "GET",
                &format!("{group}-2"),
                &[],
                b"",
            )
            .await
            .status,
        ];
        assert_eq!(statuses, [200, 200, 429], "{protocol:?}: the group's count");
    }
}
