//! limit-count through the gateway, over HTTP/1.1 and HTTP/2 alike: a count per window and
//! key, refused requests answered with the configured status and body, the quota headers on
//! every answer, keys read from headers or fixed, groups shared by routes, and a count exact
//! across the node's workers.
//!
//! Windows are a minute long: nothing resets while a test runs (resets are unit-tested with
//! set instants).

mod support;

use std::net::SocketAddr;

use serde_json::{json, Value};
use support::client::Response;
use support::protocols::{assert_refused, call, Protocol, PROTOCOLS};
use support::upstream::Upstream;
use support::Pylon;

/// A route on `uri` to `up` with `plugins`.
fn route(id: &str, uri: &str, up: &Upstream, plugins: Value) -> Value {
    json!({"id": id, "uri": uri, "plugins": plugins, "upstream": {"nodes": {up.addr.to_string(): 1}}})
}

fn routes(routes: &[Value]) -> String {
    json!({ "routes": routes }).to_string()
}

async fn get(protocol: Protocol, addr: SocketAddr, uri: &str, user: &str) -> Response {
    call(protocol, addr, "GET", uri, &[("x-user", user)], b"").await
}

/// Asserts the quota headers: `limit`, `remaining`, and a reset within the minute's window.
fn assert_quota(res: &Response, limit: u64, remaining: u64, what: &str) {
    assert_eq!(
        res.header("x-ratelimit-limit"),
        Some(limit.to_string().as_str()),
        "{what}"
    );
    assert_eq!(
        res.header("x-ratelimit-remaining"),
        Some(remaining.to_string().as_str()),
        "{what}"
    );
    let reset: u64 = res
        .header("x-ratelimit-reset")
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no X-RateLimit-Reset in {:?}", res.headers));
    assert!((1..=60).contains(&reset), "{what}: reset in {reset} s");
}

fn assert_proxied(res: &Response, what: &str) {
    assert_eq!((res.status, res.text().as_str()), (200, "up"), "{what}");
}

#[tokio::test]
async fn a_count_lets_that_many_through_then_refuses_with_the_quota_headers() {
    let up = Upstream::start("up");
    let limit = |window_type: &str| {
        json!({"limit-count": {
            "count": 3, "time_window": 60, "window_type": window_type,
            "rejected_code": 429, "rejected_msg": "too many requests"
        }})
    };
    // One route per protocol and window type, each with its own count.
    let mut configured = Vec::new();
    for protocol in PROTOCOLS {
        for window_type in ["fixed", "sliding"] {
            let id = format!("{protocol:?}-{window_type}");
            configured.push(route(&id, &format!("/{id}"), &up, limit(window_type)));
        }
    }
    let pylon = Pylon::start(&routes(&configured), "");
    for protocol in PROTOCOLS {
        for window_type in ["fixed", "sliding"] {
            let uri = format!("/{protocol:?}-{window_type}");
            for n in 1..=3 {
                let what = format!("{uri} request {n}");
                let res = get(protocol, pylon.addr, &uri, "ann").await;
                assert_proxied(&res, &what);
                assert_quota(&res, 3, 3 - n, &what);
            }
            for n in 4..=5 {
                let what = format!("{uri} request {n}");
                let before = up.request_count();
                let res = get(protocol, pylon.addr, &uri, "ann").await;
                let body = json!({"error_msg": "too many requests"});
                assert_refused(&res, 429, body, &up, before, &what);
                assert_quota(&res, 3, 0, &what);
            }
        }
    }
}

#[tokio::test]
async fn a_key_from_a_header_counts_each_user_apart() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(
        &routes(&[route(
            "by-user",
            "/by-user",
            &up,
            json!({"limit-count": {"count": 2, "time_window": 60, "key": "http_x_user"}}),
        )]),
        "",
    );
    for protocol in PROTOCOLS {
        let (ann, bob) = (format!("ann-{protocol:?}"), format!("bob-{protocol:?}"));
        for user in [&ann, &ann, &bob, &bob] {
            let res = get(protocol, pylon.addr, "/by-user", user).await;
            assert_proxied(&res, &format!("{user}'s first two"));
        }
        for user in [&ann, &bob] {
            let before = up.request_count();
            let res = get(protocol, pylon.addr, "/by-user", user).await;
            // APISIX's default refusal: 503 with an empty body.
            assert_eq!(res.status, 503, "{user}'s third: {}", res.text());
            assert_eq!(res.body, b"", "{user}'s third");
            assert_eq!(up.request_count(), before, "{user}'s third went upstream");
            assert_quota(&res, 2, 0, &format!("{user}'s third"));
        }
    }
}

#[tokio::test]
async fn routes_of_a_group_share_one_count() {
    let up = Upstream::start("up");
    let limit = |group: Option<&str>| {
        let mut config = json!({"count": 2, "time_window": 60, "key": "http_x_user"});
        if let Some(group) = group {
            config["group"] = json!(group);
        }
        json!({ "limit-count": config })
    };
    let pylon = Pylon::start(
        &routes(&[
            route("a", "/a", &up, limit(Some("shared"))),
            route("b", "/b", &up, limit(Some("shared"))),
            // The same limit without the group: a count of its own.
            route("c", "/c", &up, limit(None)),
        ]),
        "",
    );
    for protocol in PROTOCOLS {
        let user = format!("{protocol:?}");
        assert_proxied(&get(protocol, pylon.addr, "/a", &user).await, "/a first");
        let res = get(protocol, pylon.addr, "/b", &user).await;
        assert_proxied(&res, "/b second");
        assert_quota(&res, 2, 0, "/b second");
        for uri in ["/a", "/b"] {
            let res = get(protocol, pylon.addr, uri, &user).await;
            assert_eq!(res.status, 503, "{protocol:?} {uri} third of the group");
        }
        let res = get(protocol, pylon.addr, "/c", &user).await;
        assert_proxied(&res, "/c outside the group");
        assert_quota(&res, 2, 1, "/c outside the group");
    }
}

#[tokio::test]
async fn a_constant_key_counts_every_client_together() {
    let up = Upstream::start("up");
    // real-ip makes each request's X-Real-IP its client address, so that clients differ.
    let with_real_ip = |limit: Value| {
        json!({
            "real-ip": {"source": "http_x_real_ip", "trusted_addresses": ["127.0.0.1"]},
            "limit-count": limit,
        })
    };
    let by_client = json!({"count": 2, "time_window": 60});
    let constant = json!({"count": 2, "time_window": 60, "key_type": "constant", "key": "all"});
    // One pair of routes per protocol: a constant key counts every request of its route.
    let mut configured = Vec::new();
    for protocol in PROTOCOLS {
        for (name, limit) in [("by-client", &by_client), ("constant", &constant)] {
            let id = format!("{name}-{protocol:?}");
            let plugins = with_real_ip(limit.clone());
            configured.push(route(&id, &format!("/{id}"), &up, plugins));
        }
    }
    let pylon = Pylon::start(&routes(&configured), "");
    for protocol in PROTOCOLS {
        let clients = ["198.51.100.1", "198.51.100.2", "198.51.100.3"];
        let mut statuses = Vec::new();
        for name in ["by-client", "constant"] {
            for client in clients {
                let (uri, headers) = (format!("/{name}-{protocol:?}"), [("x-real-ip", client)]);
                let res = call(protocol, pylon.addr, "GET", &uri, &headers, b"").await;
                statuses.push(res.status);
            }
        }
        // By client address each is alone; with the constant key the third is over the count.
        assert_eq!(statuses, [200, 200, 200, 200, 200, 503], "{protocol:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn the_count_is_exact_across_workers() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(
        &routes(&[route(
            "shared",
            "/shared",
            &up,
            json!({"limit-count": {"count": 25, "time_window": 60, "key_type": "constant",
                "key": "all"}}),
        )]),
        "  workers: 2\n",
    );
    // 40 requests at once, each on its own connection: the kernel spreads connections over
    // both workers (SO_REUSEPORT), so a count kept per worker would let up to 50 through.
    let addr = pylon.addr;
    let requests: Vec<_> = (0..40)
        .map(|i| {
            let protocol = PROTOCOLS[i % 2];
            tokio::spawn(async move { call(protocol, addr, "GET", "/shared", &[], b"").await })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.unwrap().status);
    }
    let admitted = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 503).count();
    assert_eq!((admitted, refused), (25, 15), "{statuses:?}");
    assert_eq!(up.request_count(), 25);
}
